"""Services: the only code that touches storage. REST and the socket both
call them, so a rule lives in one place whichever way a client comes in."""
