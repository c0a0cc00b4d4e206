// npm `eventsource` 5 (also 2): the browser's EventSource API for Node. It reconnects after
// a clean end and after errors, with the last id as `Last-Event-ID`, as browsers do; what
// to add is a listener for `sync-required` (onmessage sees only unnamed events).
// (Not 3 or 4: they drop the id of a frame without data, the id a stream opens with.)
import { EventSource } from 'eventsource';

export function follow(url, { onEvent, onSyncRequired, onOpen }, Impl = EventSource) {
  const es = new Impl(url);
  es.onopen = () => onOpen?.();
  es.onmessage = (e) => onEvent(e.data, e.lastEventId);
  // The client missed events (history trimmed, store lost, cursor from another epoch):
  // refetch the state it shows. The stream goes on from the event after the frame's id.
  es.addEventListener('sync-required', (e) => onSyncRequired(JSON.parse(e.data)));
  return () => es.close();
}
