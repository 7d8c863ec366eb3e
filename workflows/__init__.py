"""streamrec workflows."""
