"""The admins' status page and its JSON API (`planshift serve`)."""
