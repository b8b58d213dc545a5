"""fedfleet's Flower App: thin entry points into the installed package."""
