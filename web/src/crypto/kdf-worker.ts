// The Web Worker that runs Argon2id, so the page keeps answering while a login derives its keys
// (256 MiB of memory at the default cost). libsodium reports no progress from inside
// crypto_pwhash; the page shows the elapsed time instead (kdf.ts).
import { loadSodium } from "./sodium";
import { rootKey, subkeys, type KdfParams } from "./kdf-core";

interface Request {
  password: string;
  salt: Uint8Array;
  kdf: KdfParams;
}

self.onmessage = async (event: MessageEvent<Request>) => {
  try {
    const sodium = await loadSodium();
    const root = rootKey(sodium, event.data.password, event.data.salt, event.data.kdf);
    const keys = subkeys(sodium, root);
    sodium.memzero(root);
    self.postMessage({ ok: true, ...keys });
  } catch (error) {
    self.postMessage({ ok: false, error: String((error as Error)?.message ?? error) });
  }
};
