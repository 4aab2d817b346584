"""The one exception type of the merge engine: its message names the file, key or tensor at fault."""


class MergeError(ValueError):
    """Bad input or a failed merge; nothing was written to the output folder."""
