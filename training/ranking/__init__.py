"""streamrec training: ranking."""
