"""Follows an ssegate stream with httpx-sse, which never reconnects by itself: reconnect
after every end with the last id, after the stream's `retry:`, with a read timeout longer
than the heartbeat (httpx's default 5 s is shorter than the 15 s heartbeat)."""

import json
import random
import time

import httpx
from httpx_sse import SSEError, connect_sse


def follow(url, on_event, on_sync_required, on_open=lambda: None, stop=lambda: False):
    last_id, retry_s = "", 1.0
    with httpx.Client(timeout=httpx.Timeout(5.0, read=45.0)) as client:
        while not stop():
            headers = {"Last-Event-ID": last_id} if last_id else {}
            try:
                with connect_sse(client, "GET", url, headers=headers) as source:
                    source.response.raise_for_status()  # a proxy's 502: retry
                    on_open()
                    for sse in source.iter_sse():  # SSEError: not an event stream
                        if sse.retry:
                            retry_s = sse.retry / 1000
                        if sse.id:
                            last_id = sse.id  # the id-only opening frame's too
                        if sse.event == "sync-required":
                            on_sync_required(json.loads(sse.data))
                        elif sse.event == "message" and sse.data:  # not heartbeats
                            on_event(sse.data, sse.id)
            except (httpx.HTTPError, SSEError):
                pass
            time.sleep(retry_s * random.uniform(0.5, 1.0))
