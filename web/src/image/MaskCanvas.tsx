// The inpainting mask: drawn with a brush (mouse, pen or touch) on a canvas laid over the picture,
// at the picture's own pixel size; white is redrawn, black kept (the image service's mask).
import { useEffect, useRef, useState } from "preact/hooks";
import { pngBlob } from "./store";

export interface MaskHandle {
  png(): Promise<Uint8Array>;
  painted(): boolean;
}

export function MaskCanvas({ src, width, height, handle }: { src: string; width: number; height: number; handle: { current: MaskHandle | null } }) {
  const canvas = useRef<HTMLCanvasElement>(null);
  const [brush, setBrush] = useState(Math.max(8, Math.round(Math.min(width, height) / 12)));
  const [painted, setPainted] = useState(false);
  const drawing = useRef(false);

  const clear = () => {
    const ctx = canvas.current!.getContext("2d")!;
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, width, height);
    setPainted(false);
  };
  useEffect(clear, [width, height]);
  useEffect(() => {
    handle.current = {
      png: async () => new Uint8Array(await (await pngBlob(canvas.current!)).arrayBuffer()),
      painted: () => painted,
    };
  });

  const at = (event: PointerEvent) => {
    const rect = canvas.current!.getBoundingClientRect();
    return { x: ((event.clientX - rect.left) / rect.width) * width, y: ((event.clientY - rect.top) / rect.height) * height };
  };
  const dab = (event: PointerEvent) => {
    const ctx = canvas.current!.getContext("2d")!;
    const { x, y } = at(event);
    ctx.fillStyle = "#fff";
    ctx.beginPath();
    ctx.arc(x, y, brush / 2, 0, Math.PI * 2);
    ctx.fill();
    setPainted(true);
  };
  const fill = () => {
    const ctx = canvas.current!.getContext("2d")!;
    ctx.fillStyle = "#fff";
    ctx.fillRect(Math.round(width / 4), Math.round(height / 4), Math.round(width / 2), Math.round(height / 2));
    setPainted(true);
  };

  return (
    <div class="mask-editor">
      <div class="mask-stack" style={{ aspectRatio: `${width} / ${height}` }}>
        <img src={src} alt="The picture to inpaint" width={width} height={height} />
        <canvas ref={canvas} width={width} height={height} class="mask-canvas" data-painted={painted ? "yes" : "no"}
          aria-label="Inpainting mask: paint over what should be redrawn" role="img"
          onPointerDown={(e) => { drawing.current = true; (e.target as HTMLCanvasElement).setPointerCapture(e.pointerId); dab(e); }}
          onPointerMove={(e) => { if (drawing.current) dab(e); }}
          onPointerUp={() => (drawing.current = false)} onPointerCancel={() => (drawing.current = false)} />
      </div>
      <div class="row">
        <label>Brush size <input type="range" min={2} max={Math.max(16, Math.round(Math.min(width, height) / 3))} value={brush}
          onInput={(e) => setBrush(Number((e.target as HTMLInputElement).value))} /></label>
        <button type="button" onClick={fill}>Mask the centre</button>
        <button type="button" onClick={clear}>Clear mask</button>
      </div>
    </div>
  );
}
