"""The registry schema revisions 0001..: one file each."""
