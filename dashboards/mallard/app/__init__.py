"""mallard.app: the `mallard` command, the one place that composes the stages into processes."""
