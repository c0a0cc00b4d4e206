"""Follows an ssegate stream with sseclient-py and requests, which never reconnect by
themselves: reconnect after every end with the last id, after the stream's `retry:`, with a
read timeout longer than the heartbeat. sseclient-py drops frames without data, so the id
a stream opens with is never seen: until the first event, a reconnect starts afresh."""

import json
import random
import time

import requests
import sseclient


def follow(url, on_event, on_sync_required, on_open=lambda: None, stop=lambda: False):
    last_id, retry_s = "", 1.0
    while not stop():
        headers = {"Accept": "text/event-stream"}
        if last_id:
            headers["Last-Event-ID"] = last_id
        try:
            with requests.get(url, headers=headers, stream=True, timeout=(5, 45)) as res:
                res.raise_for_status()  # a proxy's 502: retry
                on_open()
                # chunk_size=None: each chunk as it arrives (iterating `res` waits for 128 bytes)
                for sse in sseclient.SSEClient(res.iter_content(chunk_size=None)).events():
                    if sse.retry:
                        retry_s = int(sse.retry) / 1000
                    if sse.id:
                        last_id = sse.id
                    if sse.event == "sync-required":
                        on_sync_required(json.loads(sse.data))
                    elif sse.event == "message":
                        on_event(sse.data, sse.id)
        except requests.RequestException:
            pass
        time.sleep(retry_s * random.uniform(0.5, 1.0))
