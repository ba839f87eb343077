"""mallard.dashboards: the Dash UI (to come)."""
