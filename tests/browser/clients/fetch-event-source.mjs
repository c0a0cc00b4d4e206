// @microsoft/fetch-event-source (browsers; it can send headers such as Authorization).
// It resumes with the last id by itself, but it gives up after a clean end unless
// `onclose` throws, it hands the opening id-only frame and every heartbeat to `onmessage`
// as empty messages, and named events arrive there too.
import { fetchEventSource } from '@microsoft/fetch-event-source';

class StreamEnded extends Error {}

export function follow(url, { onEvent, onSyncRequired, onOpen }, headers = {}) {
  const ctrl = new AbortController();
  fetchEventSource(url, {
    signal: ctrl.signal,
    headers,
    openWhenHidden: true, // keep streaming in a background tab (a reconnect would replay)
    async onopen(res) {
      const type = res.headers.get('content-type') ?? '';
      if (!res.ok || !type.startsWith('text/event-stream')) {
        throw new Error(`stream refused: ${res.status}`); // onerror decides: retry
      }
      onOpen?.();
    },
    onmessage(ev) {
      if (ev.event === 'sync-required') return onSyncRequired(JSON.parse(ev.data));
      if (ev.event === '' && ev.data === '') return; // the id-only opening frame
      if (ev.event === '' || ev.event === 'message') onEvent(ev.data, ev.id);
    },
    // A clean end (the node drains, a token expires): throw, so that it reconnects.
    onclose() {
      throw new StreamEnded();
    },
    // Return nothing: retry after the stream's `retry:` (the library's 1 s before one).
    onerror() {},
  });
  return () => ctrl.abort();
}
