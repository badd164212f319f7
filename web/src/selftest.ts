// The browser's crypto and document code checked against the published test vectors
// (docs/encryption-vectors.json, docs/format-vectors.json): the same bytes as the Python SDK.
// Loaded on demand (window.fabulaSelfTest), never on the first page load.
import { fromHex, toHex, utf8, decodeUtf8 } from "./crypto/bytes";
import { inflate, openObject, sealPayload } from "./crypto/envelope";
import { deriveKeys } from "./crypto/kdf";
import { derivedKey, Keystore, parseBody, rewrap, wrapMasterKey, type ObjectType } from "./crypto/keystore";
import { loadSodium } from "./crypto/sodium";
import { History, plainText } from "./documents/content";
import { canonicalJson, checkWritableVersion, NewerFormatError, parseJson, type Json } from "./documents/json";
import { readStory } from "./documents/story";
import { readSnapshot, snapshotJson } from "./documents/store";

export interface CheckResult {
  name: string;
  ok: boolean;
  detail: string;
}

const LIBSODIUM_MINIMUM = { opslimit: 1, memlimit: 8192 };

/** `encText`, `fmtText`: the two vector files as published (parsed here, floats kept as floats). */
export async function run(encText: string, fmtText: string): Promise<CheckResult[]> {
  const enc = parseJson(encText) as any;
  const fmt = parseJson(fmtText) as any;
  const sodium = await loadSodium();
  const results: CheckResult[] = [];
  const check = async (name: string, body: () => Promise<string | true> | string | true) => {
    try {
      const outcome = await body();
      results.push({ name, ok: outcome === true, detail: outcome === true ? "" : outcome });
    } catch (error) {
      results.push({ name, ok: false, detail: String(error) });
    }
  };
  const same = (got: Uint8Array, want: string) => (toHex(got) === want ? true : `got ${toHex(got)}, want ${want}`);

  for (const [i, v] of enc.kdf.entries()) {
    await check(`encryption kdf[${i}] (${v.opslimit}, ${v.memlimit})`, async () => {
      if (toHex(utf8.encode(v.password.normalize("NFC"))) !== v.password_nfc_utf8) return "NFC bytes differ";
      const keys = await deriveKeys(v.password, fromHex(v.salt), { opslimit: v.opslimit, memlimit: v.memlimit }, "the vectors",
        LIBSODIUM_MINIMUM);
      const a = same(keys.authKey, v.auth_key);
      return a === true ? same(keys.keyEncryptionKey, v.key_encryption_key) : a;
    });
  }
  for (const [i, v] of enc.master_key_wrap.entries()) {
    await check(`encryption master_key_wrap[${i}]`, () => same(wrapMasterKey(sodium, fromHex(v.master_key), fromHex(v.key_encryption_key),
      fromHex(v.nonce)), v.wrapped));
  }
  for (const [i, v] of enc.keystore.entries()) {
    await check(`encryption keystore[${i}]`, () => {
      const kek = fromHex(v.key_encryption_key);
      const master = fromHex(v.master_key);
      const wrapped = fromHex(v.blob).slice(5, 77);
      const keystore = new Keystore(master, wrapped, parseBody(utf8.encode(v.body)));
      if (decodeUtf8(keystore.body()) !== v.body) return `body ${decodeUtf8(keystore.body())} differs`;
      const sealed = same(keystore.seal(sodium, fromHex(v.body_nonce)), v.blob);
      if (sealed !== true) return sealed;
      const opened = Keystore.open(sodium, fromHex(v.blob), { kek });
      return decodeUtf8(opened.body()) === v.body ? true : "the blob opens to another body";
    });
  }
  for (const [i, v] of enc.rewrap.entries()) {
    await check(`encryption rewrap[${i}]`, () => same(rewrap(sodium, fromHex(v.blob), fromHex(v.old_key_encryption_key),
      fromHex(v.new_key_encryption_key), fromHex(v.nonce)), v.rewrapped));
  }
  const objectCheck = async (v: any, plaintextHex: string) => {
    const key = fromHex(v.data_key);
    const blob = sealPayload(sodium, key, v.type as ObjectType, v.id, fromHex(v.payload), v.compression, BigInt(v.revision), fromHex(v.nonce));
    const sealed = same(blob, v.blob);
    if (sealed !== true) return sealed;
    const opened = await openObject(sodium, key, v.type, v.id, fromHex(v.blob));
    if (toHex(opened.plaintext) !== plaintextHex) return "the blob opens to other content";
    if (v.compression === 1 && toHex(await inflate(fromHex(v.payload), "payload")) !== plaintextHex) return "payload inflates to other content";
    return true;
  };
  for (const [i, v] of enc.objects.entries()) {
    await check(`encryption objects[${i}] ${v.type}/${v.id}`, () => objectCheck(v, toHex(utf8.encode(v.plaintext))));
  }
  for (const [i, v] of fmt.derived_keys.entries()) {
    await check(`format derived_keys[${i}] ${v.id}`, () => same(derivedKey(sodium, fromHex(v.parent_key), v.parent_type, v.id), v.derived_key));
  }
  for (const v of fmt.objects) {
    await check(`format objects ${v.name}`, async () => {
      const hex = v.plaintext_hex ?? toHex(utf8.encode(v.plaintext));
      const outcome = await objectCheck(v, hex);
      if (outcome !== true || v.plaintext === undefined) return outcome;
      const again = canonicalJson(parseJson(v.plaintext));
      return again === v.plaintext ? true : `re-encoding differs: ${again}`;
    });
  }
  await check("format history", () => {
    const h = fmt.history;
    const snap = readSnapshot(h.snapshot as Json, "snapshot");
    const history = new History(snap.nodes, snap.blocks, snap.snapshotNode);
    let head = snap.head;
    for (const segment of h.segments) {
      history.appendStored(segment.nodes, "segment");
      head = segment.head;
    }
    history.move(head);
    if (history.head !== h.head) return `head ${history.head}`;
    if (history.text !== h.text) return `text ${JSON.stringify(history.text)}`;
    if (canonicalJson(history.blocks as Json) !== canonicalJson(h.blocks)) return "blocks differ";
    for (const [id, text] of Object.entries(h.text_at)) {
      if (plainText(history.blocksAt(Number(id))) !== text) return `text at node ${id} differs`;
    }
    return true;
  });
  await check("format migration", () => {
    const m = fmt.migration;
    const story = readStory(m.story_v1, "story").story;
    if (canonicalJson(story) !== canonicalJson(m.story_v2)) return `story ${canonicalJson(story)}`;
    const snap = readSnapshot(m.content_v1, "content");
    const content = snapshotJson(new History(snap.nodes, snap.blocks, snap.head), 0);
    return canonicalJson(content) === canonicalJson(m.content_v2) ? true : `content ${canonicalJson(content)}`;
  });
  await check("format unknown_fields", () => {
    const again = canonicalJson(fmt.unknown_fields.lorebook);
    return again === fmt.unknown_fields.canonical ? true : `got ${again}`;
  });
  await check("format newer_version", () => {
    try {
      checkWritableVersion(fmt.newer_version.preset, 2, "presets/preset-1");
      return "a version-3 preset was accepted for writing";
    } catch (error) {
      return error instanceof NewerFormatError ? true : String(error);
    }
  });
  return results;
}
