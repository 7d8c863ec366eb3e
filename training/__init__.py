"""streamrec training."""
