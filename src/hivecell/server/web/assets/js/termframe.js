// The terminal framing of /sessions/{name}/attach (hivecell.sessions.framing): one frame per
// WebSocket message, type (1 byte), agent (2 bytes, always 0), payload length (4 bytes,
// big-endian), payload. Resize payloads are cols and rows as big-endian u16.
export const STDOUT = 1;
export const STDERR = 2;
export const CONTROL = 3;
export const RESIZE = 4;
export const STDIN = 5;
const HEADER = 7;

export function encode(type, payload) {
  const frame = new Uint8Array(HEADER + payload.length);
  const view = new DataView(frame.buffer);
  view.setUint8(0, type);
  view.setUint16(1, 0);
  view.setUint32(3, payload.length);
  frame.set(payload, HEADER);
  return frame;
}

export function resize(cols, rows) {
  const payload = new Uint8Array(4);
  const view = new DataView(payload.buffer);
  view.setUint16(0, cols);
  view.setUint16(2, rows);
  return encode(RESIZE, payload);
}

// {type, payload} of one message; null when it is not a whole frame (the server never sends
// one, so the page drops it rather than guess).
export function decode(buffer) {
  if (buffer.byteLength < HEADER) return null;
  const view = new DataView(buffer);
  const length = view.getUint32(3);
  if (buffer.byteLength !== HEADER + length) return null;
  return { type: view.getUint8(0), payload: new Uint8Array(buffer, HEADER, length) };
}
