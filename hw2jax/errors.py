"""The one error type users see: raised by the library, turned into one line + exit 2 by the CLIs."""


class UserError(Exception):
  """Bad input a user can fix (missing data, wrong keys, bad flag values).

  The message is one line that says what was wrong and what to do about it.
  """


class AbandonedWorkError(UserError):
  """A UserError after which background work cannot finish (an Orbax save that failed half-way
  leaves threads waiting for signals that never come, for minutes): the CLI reports it and
  exits without waiting for them."""
