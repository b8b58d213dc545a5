"""The operators' web dashboard, served by the hub itself under ``/ui``.

All assets ship inside the package (no CDN: hubs are often offline). The page is a small
single-page app over the REST API: it logs in with an API token, and updates live through a
server-sent-events stream (``/ui/stream``) that announces every change of the fleet, rollouts
and reports, after which the open view re-reads what it shows.
"""

from cloud_hub.dashboard.routes import mount, mount_dashboard

__all__ = ["mount", "mount_dashboard"]
