"""A CloudEvent-signature function: it records each event (attributes, data, how it arrived) in a file
under ``$EVENTS_DIR`` named by the event's ``data["tag"]``, so tests can see what was delivered."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import flask


def on_event(cloud_event: Any) -> None:
    data = cloud_event.get_data()
    if isinstance(data, dict) and "raise" in data:
        raise ValueError(f"cannot handle event {data.get('tag')}")
    attributes = {k: str(v) for k, v in cloud_event.get_attributes().items()}
    record = {"attributes": attributes, "data": data, "content_type": flask.request.headers.get("Content-Type")}
    tag = data.get("tag", "untagged") if isinstance(data, dict) else "untagged"
    Path(os.environ["EVENTS_DIR"], f"{tag}.json").write_text(json.dumps(record))
