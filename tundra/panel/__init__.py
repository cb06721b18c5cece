"""The web front end: the HTML panel and the REST API ``/api/v1``, served by ``tundra serve``."""
