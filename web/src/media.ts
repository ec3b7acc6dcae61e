// Local devices: getUserMedia with fallbacks, readable error messages, and a microphone level meter.

export type DeviceKind = 'camera' | 'microphone';

export interface Acquired {
  microphone: MediaStreamTrack | null;
  camera: MediaStreamTrack | null;
  /** Why a device is missing, worded for the user; absent when it worked or was not asked for. */
  errors: Partial<Record<DeviceKind, string>>;
}

// Ask for 720p: with a smaller source the browser sends fewer simulcast layers.
const VIDEO_CONSTRAINTS: MediaTrackConstraints = {
  width: { ideal: 1280 },
  height: { ideal: 720 },
  frameRate: { ideal: 30 },
};
const AUDIO_CONSTRAINTS: MediaTrackConstraints = {
  echoCancellation: true,
  noiseSuppression: true,
  autoGainControl: true,
};

function constraintsFor(kind: DeviceKind, deviceId?: string): MediaTrackConstraints {
  const base = kind === 'camera' ? VIDEO_CONSTRAINTS : AUDIO_CONSTRAINTS;
  return deviceId ? { ...base, deviceId: { exact: deviceId } } : { ...base };
}

/** Turns a getUserMedia / getDisplayMedia failure into a sentence a person can act on. */
export function describeMediaError(err: unknown, what: DeviceKind | 'screen'): string {
  const name = err instanceof DOMException ? err.name : '';
  const device = what === 'screen' ? 'screen sharing' : `the ${what}`;
  switch (name) {
    case 'NotAllowedError':
    case 'SecurityError':
      return what === 'screen'
        ? 'Screen sharing was cancelled or blocked.'
        : `Permission to use the ${what} was denied. Allow it in the browser's site settings and reload to use it.`;
    case 'NotFoundError':
    case 'OverconstrainedError':
      return what === 'screen' ? 'No screen or window is available to share.' : `No ${what} was found.`;
    case 'NotReadableError':
    case 'AbortError':
      return `Could not start ${device}: it may be in use by another application.`;
    default:
      if (!navigator.mediaDevices) return 'This page cannot use media devices (it needs HTTPS or localhost).';
      return `Could not start ${device}${err instanceof Error && err.message ? `: ${err.message}` : '.'}`;
  }
}

async function getOne(kind: DeviceKind, deviceId?: string): Promise<MediaStreamTrack> {
  const c = constraintsFor(kind, deviceId);
  const stream = await navigator.mediaDevices.getUserMedia(kind === 'camera' ? { video: c } : { audio: c });
  const track = kind === 'camera' ? stream.getVideoTracks()[0] : stream.getAudioTracks()[0];
  if (!track) throw new DOMException('no track', 'NotFoundError');
  return track;
}

/**
 * Opens the wanted devices. Asks for both at once (one permission prompt), and on failure asks
 * for each alone so that one missing or blocked device does not cost the other.
 */
export async function acquire(want: { microphone?: string | true; camera?: string | true }): Promise<Acquired> {
  const result: Acquired = { microphone: null, camera: null, errors: {} };
  if (!navigator.mediaDevices?.getUserMedia) {
    const msg = describeMediaError(null, 'camera');
    if (want.microphone) result.errors.microphone = msg;
    if (want.camera) result.errors.camera = msg;
    return result;
  }
  const id = (v: string | true | undefined) => (typeof v === 'string' ? v : undefined);
  if (want.microphone && want.camera) {
    try {
      const stream = await navigator.mediaDevices.getUserMedia({
        audio: constraintsFor('microphone', id(want.microphone)),
        video: constraintsFor('camera', id(want.camera)),
      });
      result.microphone = stream.getAudioTracks()[0] ?? null;
      result.camera = stream.getVideoTracks()[0] ?? null;
      if (result.microphone && result.camera) return result;
      result.microphone?.stop();
      result.camera?.stop();
      result.microphone = result.camera = null;
    } catch {
      // Fall through to one device at a time to learn which one failed.
    }
  }
  for (const kind of ['microphone', 'camera'] as const) {
    if (!want[kind]) continue;
    try {
      result[kind] = await getOne(kind, id(want[kind]));
    } catch (err) {
      result.errors[kind] = describeMediaError(err, kind);
    }
  }
  return result;
}

export async function listDevices(): Promise<{ microphones: MediaDeviceInfo[]; cameras: MediaDeviceInfo[] }> {
  const all = navigator.mediaDevices?.enumerateDevices ? await navigator.mediaDevices.enumerateDevices() : [];
  return {
    microphones: all.filter((d) => d.kind === 'audioinput' && d.deviceId),
    cameras: all.filter((d) => d.kind === 'videoinput' && d.deviceId),
  };
}

/** Reports the loudness (0..1) of an audio track about 20 times a second. */
export class LevelMeter {
  private readonly ctx: AudioContext;
  private timer: number;

  constructor(track: MediaStreamTrack, onLevel: (level: number) => void) {
    this.ctx = new AudioContext();
    const source = this.ctx.createMediaStreamSource(new MediaStream([track]));
    const analyser = this.ctx.createAnalyser();
    analyser.fftSize = 1024;
    source.connect(analyser);
    const samples = new Float32Array(analyser.fftSize);
    // A timer rather than requestAnimationFrame: it keeps working in background tabs.
    this.timer = window.setInterval(() => {
      analyser.getFloatTimeDomainData(samples);
      let sum = 0;
      for (const s of samples) sum += s * s;
      const rms = Math.sqrt(sum / samples.length);
      // Speech RMS sits around 0.01–0.3; a square root spreads that over the meter.
      onLevel(Math.min(1, Math.sqrt(rms) * 1.6));
    }, 50);
    void this.ctx.resume();
  }

  stop(): void {
    clearInterval(this.timer);
    void this.ctx.close();
  }
}
