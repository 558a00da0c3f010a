"""HTTP routers: health, the API (v1) and the page."""
