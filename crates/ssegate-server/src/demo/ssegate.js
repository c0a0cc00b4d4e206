// ssegate's browser helper, served by every node at /ssegate.js (no build step):
//
//   import { subscribe } from '/ssegate.js';
//   const sub = subscribe('/v1/channels/news/events', {
//     onMessage: (data, id) => show(data),          // unnamed events
//     events: { price: (data, id) => tick(data) },  // named events, by type
//     onSyncRequired: (info) => refetchState(info), // events were missed: reload the state
//     token: async () => (await fetch('/my-token')).text(), // with auth: a fresh token
//     onState: (state) => badge(state),             // 'connecting' | 'open' | 'reconnecting' | 'closed'
//   });
//   sub.close();
//
// It uses a plain EventSource, which reconnects with Last-Event-ID by itself after a
// stream ends. What it adds is what EventSource cannot do:
// - `token-expired`: EventSource cannot change its URL, so it would reconnect with the
//   expired token and get 401. The helper closes it, asks `token()` for a fresh one and
//   opens a new EventSource with `?token=` and `?lastEventId=` (the id the stream had
//   reached, the opening id-only frame's included), so nothing is missed or repeated.
// - a stream that EventSource gave up on (an error status from something in between):
//   opened again from the same id after a jittered, growing delay (1 s up to 30 s).
// - `sync-required` and the connection state, as callbacks.

const MAX_DELAY_MS = 30_000;

export function subscribe(url, options = {}) {
  const { onMessage, events = {}, onSyncRequired, onState, token } = options;
  let es = null;
  let lastId = null;
  let closed = false;
  let failures = 0;
  let timer = null;
  let state = null;

  const setState = (next) => {
    if (next !== state) {
      state = next;
      onState?.(next);
    }
  };
  // Every frame EventSource dispatches carries the id the stream has reached.
  const remembering = (handle) => (e) => {
    if (e.lastEventId) lastId = e.lastEventId;
    handle(e);
  };

  async function open() {
    if (closed) return;
    setState(lastId === null && failures === 0 ? 'connecting' : 'reconnecting');
    const target = new URL(url, location.href);
    if (lastId !== null) target.searchParams.set('lastEventId', lastId);
    if (token) {
      try {
        target.searchParams.set('token', await token());
      } catch {
        return retryLater();
      }
      if (closed) return;
    }
    const source = new EventSource(target);
    es = source;
    source.onopen = () => {
      failures = 0;
      setState('open');
    };
    source.onmessage = remembering((e) => onMessage?.(e.data, e.lastEventId));
    for (const [type, handler] of Object.entries(events)) {
      source.addEventListener(type, remembering((e) => handler(e.data, e.lastEventId)));
    }
    source.addEventListener('sync-required', remembering((e) => onSyncRequired?.(JSON.parse(e.data))));
    source.addEventListener('token-expired', remembering(() => {
      source.close();
      open();
    }));
    source.onerror = () => {
      if (source !== es) return;
      if (source.readyState === EventSource.CLOSED) {
        retryLater();
      } else {
        setState('reconnecting'); // EventSource retries by itself
      }
    };
  }

  function retryLater() {
    if (closed) return;
    es?.close();
    setState('reconnecting');
    failures += 1;
    const base = Math.min(MAX_DELAY_MS, 1000 * 2 ** (failures - 1));
    timer = setTimeout(open, base / 2 + Math.random() * (base / 2));
  }

  open();
  return {
    close() {
      closed = true;
      clearTimeout(timer);
      es?.close();
      setState('closed');
    },
    get state() {
      return state;
    },
    get lastEventId() {
      return lastId;
    },
  };
}
