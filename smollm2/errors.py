"""The one exception type for bad user input.

Anything a user can get wrong (a config key, a data file, a checkpoint, a tokenizer, a CLI flag) raises
`UserError` with a one-line message that names the file or key and what was expected. The CLI turns it
into `smollm2 <verb>: error: <message>` on stderr and exit code 2; every other exception is a bug or a
failure of the machine and keeps its traceback.
"""


class UserError(Exception):
    """Bad input from the user: reported as one line on stderr, exit code 2."""
