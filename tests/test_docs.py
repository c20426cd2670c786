"""The README's tables name every setting and every error code there is."""

from __future__ import annotations

from pathlib import Path

from protocol.errors import ErrorCode
from realtime.settings import Settings

README = (Path(__file__).parent.parent / "README.md").read_text()


def test_readme_starts_with_the_two_commands() -> None:
    block = README.split("```", 2)[1]
    assert "make run" in block
    assert "make test" in block


def test_every_setting_is_documented() -> None:
    for name in Settings.model_fields:
        assert f"`SQUALL_{name.upper()}`" in README, name


def test_every_error_code_is_documented() -> None:
    for code in ErrorCode:
        assert f"| `{code.code}` | {code.status} |" in README, code.code
