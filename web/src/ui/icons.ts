// Line icons drawn for Ting (24×24, stroked with the current text colour).

const svg = (body: string) =>
  `<svg viewBox="0 0 24 24" width="20" height="20" fill="none" stroke="currentColor" stroke-width="2" stroke-linecap="round" stroke-linejoin="round">${body}</svg>`;

const MIC = '<rect x="9" y="3" width="6" height="11" rx="3"/><path d="M5 11a7 7 0 0 0 14 0M12 18v3M8 21h8"/>';
const CAMERA = '<rect x="3" y="6" width="13" height="12" rx="2"/><path d="M16 10.5l5-3v9l-5-3z"/>';
const SLASH = '<path d="M3 3l18 18"/>';

export const icons = {
  mic: svg(MIC),
  micOff: svg(MIC + SLASH),
  camera: svg(CAMERA),
  cameraOff: svg(CAMERA + SLASH),
  screen: svg('<rect x="3" y="4" width="18" height="12" rx="2"/><path d="M8 20h8M12 16v4M12 13V7M9 10l3-3 3 3"/>'),
  leave: svg('<path d="M3 15c5-4.5 13-4.5 18 0l-2.2 2.8-3.8-1.3v-2.3c-2-.8-4-.8-6 0v2.3l-3.8 1.3z"/>'),
  hand: svg(
    '<path d="M8 12V5.5a1.5 1.5 0 0 1 3 0V11M11 10V4a1.5 1.5 0 0 1 3 0v7M14 10.5V5.5a1.5 1.5 0 0 1 3 0V14c0 4-2.5 7-6 7-2.8 0-4.2-1.5-5.6-3.8L3.6 14a1.5 1.5 0 0 1 2.6-1.5L8 15"/>',
  ),
  chat: svg('<path d="M4 5h16v11H9l-5 4z"/><path d="M8 9h8M8 12h5"/>'),
  pin: svg('<path d="M9 4h6l-1 5 3 3v2H7v-2l3-3zM12 14v7"/>'),
  lock: svg('<rect x="5" y="11" width="14" height="10" rx="2"/><path d="M8 11V7a4 4 0 0 1 8 0v4"/>'),
  people: svg(
    '<circle cx="9" cy="8" r="3"/><path d="M3 19c0-3 2.7-5 6-5s6 2 6 5"/><circle cx="17" cy="9" r="2.5"/><path d="M16.5 14c2.6 0 4.5 1.8 4.5 4.5"/>',
  ),
};
