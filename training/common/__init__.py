"""streamrec training: common."""
