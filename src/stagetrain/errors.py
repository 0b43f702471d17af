"""The one exception type for mistakes a user can fix: params, data, inputs, locks.

Its message names the file, line or key and says how to fix it; the stage CLIs print it without a
traceback and exit 2. Anything else that escapes is a bug in stagetrain and keeps its traceback.
"""


class UserError(Exception):
    """A problem the user can fix in their params, data or inputs; the message says where and how."""
