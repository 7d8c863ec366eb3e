"""streamrec features."""
