// The device check before joining: camera preview, microphone level, device pickers and
// "join muted / without camera". Joining stays possible without any device.

import { acquire, LevelMeter, listDevices } from '../media.js';
import type { LocalMedia } from '../session.js';
import { h } from './dom.js';

export interface DeviceCheckOptions {
  room: string;
  name: string;
  onJoin(media: LocalMedia): void;
  onBack: (() => void) | null;
}

export function showDeviceCheck(root: HTMLElement, opts: DeviceCheckOptions): void {
  let mic: MediaStreamTrack | null = null;
  let camera: MediaStreamTrack | null = null;
  let meter: LevelMeter | null = null;
  let done = false;

  const video = h('video', { autoplay: true, playsinline: true, className: 'mirror' });
  video.muted = true;
  const previewOff = h('div', { className: 'preview-off' }, 'Camera is off');
  const fill = h('div', { className: 'meter-fill' });
  const meterEl = h(
    'div',
    { className: 'meter', role: 'meter', 'aria-label': 'Microphone level', 'aria-valuemin': 0, 'aria-valuemax': 100, 'aria-valuenow': 0 },
    fill,
  );
  const cameraSelect = h('select', { id: 'camera-select' });
  const micSelect = h('select', { id: 'mic-select' });
  const joinMuted = h('input', { type: 'checkbox', id: 'join-muted' });
  const noCamera = h('input', { type: 'checkbox', id: 'join-without-camera' });
  const cameraMsg = h('p', { id: 'camera-message', className: 'device-message', role: 'alert', hidden: true });
  const micMsg = h('p', { id: 'mic-message', className: 'device-message', role: 'alert', hidden: true });
  const join = h('button', { id: 'join', type: 'button', className: 'primary', disabled: true }, 'Starting devices…');

  const say = (el: HTMLElement, text: string | undefined) => {
    el.textContent = text ?? '';
    el.hidden = !text;
  };

  const showCamera = () => {
    video.srcObject = camera ? new MediaStream([camera]) : null;
    previewOff.hidden = camera !== null;
  };

  const showMic = () => {
    meter?.stop();
    meter = null;
    if (!mic) {
      fill.style.width = '0%';
      return;
    }
    try {
      meter = new LevelMeter(mic, (level) => {
        const pct = Math.round(level * 100);
        fill.style.width = `${pct}%`;
        meterEl.setAttribute('aria-valuenow', String(pct));
      });
    } catch {
      // No audio context (very old browser): the meter just stays empty.
    }
  };

  const fillPickers = async () => {
    const { microphones, cameras } = await listDevices();
    const fillOne = (select: HTMLSelectElement, devices: MediaDeviceInfo[], current: MediaStreamTrack | null, what: string) => {
      const currentId = current?.getSettings().deviceId;
      select.replaceChildren(
        ...devices.map((d, i) =>
          h('option', { value: d.deviceId, selected: d.deviceId === currentId }, d.label || `${what} ${i + 1}`),
        ),
      );
      select.disabled = devices.length === 0;
      if (devices.length === 0) select.append(h('option', {}, `No ${what.toLowerCase()} found`));
    };
    fillOne(cameraSelect, cameras, camera, 'Camera');
    fillOne(micSelect, microphones, mic, 'Microphone');
  };

  const open = async (which: { microphone?: string | true; camera?: string | true }) => {
    const got = await acquire(which);
    if (done) {
      got.microphone?.stop();
      got.camera?.stop();
      return;
    }
    if (which.microphone) {
      mic?.stop();
      mic = got.microphone;
      say(micMsg, got.errors.microphone);
      showMic();
    }
    if (which.camera) {
      camera?.stop();
      camera = got.camera;
      say(cameraMsg, got.errors.camera);
      showCamera();
    }
  };

  cameraSelect.addEventListener('change', () => {
    if (!noCamera.checked) void open({ camera: cameraSelect.value });
  });
  micSelect.addEventListener('change', () => void open({ microphone: micSelect.value }));
  noCamera.addEventListener('change', () => {
    if (noCamera.checked) {
      camera?.stop();
      camera = null;
      say(cameraMsg, undefined);
      showCamera();
    } else {
      void open({ camera: cameraSelect.value || true });
    }
  });

  const finish = () => {
    done = true;
    meter?.stop();
    video.srcObject = null;
  };
  join.addEventListener('click', () => {
    finish();
    if (noCamera.checked) {
      camera?.stop();
      camera = null;
    }
    opts.onJoin({ microphone: mic, camera, micMuted: joinMuted.checked, cameraMuted: false });
  });
  const back =
    opts.onBack &&
    h('button', {
      id: 'back',
      type: 'button',
      onclick: () => {
        finish();
        mic?.stop();
        camera?.stop();
        opts.onBack?.();
      },
    }, 'Back');

  root.replaceChildren(
    h(
      'main',
      { id: 'device-check', className: 'card device-check', 'aria-labelledby': 'dc-title' },
      h('h1', { id: 'dc-title' }, 'Check your camera and microphone'),
      h('p', { className: 'subtitle' }, 'Joining ', h('strong', {}, opts.room), ' as ', h('strong', {}, opts.name), '.'),
      h('div', { className: 'preview' }, video, previewOff),
      cameraMsg,
      h('div', { className: 'meter-row' }, h('span', { className: 'meter-label' }, 'Mic'), meterEl),
      micMsg,
      h(
        'div',
        { className: 'pickers' },
        h('label', { for: 'camera-select' }, 'Camera'),
        cameraSelect,
        h('label', { for: 'mic-select' }, 'Microphone'),
        micSelect,
      ),
      h('label', { className: 'check' }, joinMuted, 'Join with microphone muted'),
      h('label', { className: 'check' }, noCamera, 'Join without camera'),
      h('div', { className: 'actions' }, back, join),
    ),
  );

  void (async () => {
    await open({ microphone: true, camera: true });
    // Device names are only readable once permission was given, so list them afterwards.
    await fillPickers().catch(() => undefined);
    if (done) return;
    join.disabled = false;
    join.textContent = 'Join meeting';
    join.focus();
  })();
}
