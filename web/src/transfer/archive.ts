// Importing a Fabula export archive (docs/formats.md, section 10), as the SDK's
// FabulaClient.import_archive does: the archive's keystore opens with the password its account
// had at export time (salt and Argon2id cost from the manifest), every object is checked against
// the manifest and decrypted before anything is sent, the archive's keys are merged into this
// account's keystore (a key before its object), then the archive less its keystore goes to
// POST /user/import, which stores the objects unchanged.
import { ConflictError } from "../api/client";
import type { Vault } from "../api/vault";
import { fromBase64, toHex } from "../crypto/bytes";
import { openObject } from "../crypto/envelope";
import { deriveKeys, type KdfParams } from "../crypto/kdf";
import { Keystore, OBJECT_TYPES, type ObjectType } from "../crypto/keystore";
import { ImportRefused } from "./limits";
import { readTar, writeTar, type TarMember } from "./tar";

const MANIFEST = "manifest.json";
const KEYSTORE = "keystore.bin";
const KEYSTORE_ATTEMPTS = 8;
// These keys only open the archive's keystore in this page and are never sent, so any cost
// libsodium accepts is taken (as the SDK does): a cheap one gives a server nothing to guess at.
const ANY_COST: KdfParams = { opslimit: 1, memlimit: 8192 };

interface ManifestObject {
  type: ObjectType;
  id: string;
  size: number;
  sha256: string;
}

export interface ArchiveImport {
  importedObjects: number;
  stories: number;
}

export function isArchive(data: Uint8Array): boolean {
  return data.length >= 512 && new TextDecoder().decode(data.subarray(0, MANIFEST.length)) === MANIFEST;
}

function readManifest(member: TarMember | undefined): { salt: Uint8Array; kdf: KdfParams; objects: ManifestObject[] } {
  if (!member || member.name !== MANIFEST) throw new ImportRefused("", `the archive's first member must be ${MANIFEST}`);
  let raw: any;
  try {
    raw = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(member.data));
  } catch (error) {
    throw new ImportRefused(MANIFEST, `is not UTF-8 JSON (${error})`);
  }
  if (raw?.format !== "fabula-export") throw new ImportRefused(`${MANIFEST}.format`, 'must be "fabula-export"');
  if (raw.version !== 1) throw new ImportRefused(`${MANIFEST}.version`, `must be 1, not ${JSON.stringify(raw.version)}`);
  if (typeof raw.salt !== "string") throw new ImportRefused(`${MANIFEST}.salt`, "must be the account's salt (base64)");
  const kdf = raw.kdf;
  if (!Number.isInteger(kdf?.opslimit) || !Number.isInteger(kdf?.memlimit)) {
    throw new ImportRefused(`${MANIFEST}.kdf`, "must give the integers opslimit and memlimit");
  }
  if (!Array.isArray(raw.objects)) throw new ImportRefused(`${MANIFEST}.objects`, "must be a list");
  const objects = raw.objects.map((o: any, i: number) => {
    const where = `${MANIFEST}.objects[${i}]`;
    if (!OBJECT_TYPES.includes(o?.type)) throw new ImportRefused(`${where}.type`, `must be one of ${OBJECT_TYPES.join(", ")}`);
    if (typeof o.id !== "string" || !/^[A-Za-z0-9_-]{1,64}$/.test(o.id)) throw new ImportRefused(`${where}.id`, "must be an object id");
    if (!Number.isInteger(o.size) || o.size < 1) throw new ImportRefused(`${where}.size`, "must be an integer >= 1");
    if (typeof o.sha256 !== "string" || !/^[0-9a-f]{64}$/.test(o.sha256)) throw new ImportRefused(`${where}.sha256`, "must be 64 lowercase hex digits");
    return o as ManifestObject;
  });
  const salt = fromBase64(raw.salt);
  if (salt.length !== 16) throw new ImportRefused(`${MANIFEST}.salt`, `must be 16 bytes, not ${salt.length}`);
  return { salt, kdf: { opslimit: kdf.opslimit, memlimit: kdf.memlimit }, objects };
}

export async function importArchive(vault: Vault, archive: Uint8Array, password: string): Promise<ArchiveImport> {
  const members = readTar(archive, "the archive");
  const manifest = readManifest(members[0]);
  const keystoreMember = members.find((m) => m.name === KEYSTORE);
  if (!keystoreMember) throw new ImportRefused("", "the archive holds no keystore, so its objects cannot be decrypted");
  const files = new Map(members.filter((m) => m.type === "0" && m.name.startsWith("objects/")).map((m) => [m.name, m]));
  if (files.size !== manifest.objects.length) {
    throw new ImportRefused(`${MANIFEST}.objects`, `lists ${manifest.objects.length} objects; the archive holds ${files.size}`);
  }
  const keys = await deriveKeys(password, manifest.salt, manifest.kdf, "the archive", ANY_COST);
  let source: Keystore;
  try {
    source = Keystore.open(vault.sodium, keystoreMember.data, { kek: keys.keyEncryptionKey });
  } catch (error: any) {
    throw new ImportRefused("password", `does not open the archive's keystore: give the password the account had when it was exported (${error?.message ?? error})`);
  }
  for (const [i, object] of manifest.objects.entries()) {
    const name = `objects/${object.type}/${object.id}.bin`;
    const member = files.get(name);
    const where = `${MANIFEST}.objects[${i}]`;
    if (!member) throw new ImportRefused(where, `names ${name}, which the archive lacks`);
    if (member.data.length !== object.size) throw new ImportRefused(`${where}.size`, `is ${object.size}; the member has ${member.data.length} bytes`);
    const digest = toHex(new Uint8Array(await crypto.subtle.digest("SHA-256", member.data as BufferSource)));
    if (digest !== object.sha256) throw new ImportRefused(`${where}.sha256`, `does not match ${name}`);
    // Tampered with, or not this keystore's: refused whole, before anything is stored.
    await openObject(vault.sodium, source.keyFor(vault.sodium, object.type, object.id), object.type, object.id, member.data);
  }
  await mergeKeys(vault, source);
  const upload = writeTar(members.filter((m) => m.name !== KEYSTORE));
  const response = await vault.api.request("POST", `/user/import?expected_keystore_change_index=${vault.keystoreChangeIndex}`, {
    body: upload as BodyInit, headers: { "Content-Type": "application/x-tar" },
  });
  const body = await response.json();
  return { importedObjects: body.imported_objects, stories: manifest.objects.filter((o) => o.type === "stories").length };
}

/** Every key of `source` into the account's keystore; where both hold an id the archive's wins
 * (its object is the one about to be stored). Another device's keystore write is merged. */
async function mergeKeys(vault: Vault, source: Keystore): Promise<void> {
  for (let attempt = 0; attempt < KEYSTORE_ATTEMPTS; attempt++) {
    const next = vault.keystore.copy();
    for (const [id, entry] of source.entries) next.entries.set(id, entry);
    try {
      vault.keystoreChangeIndex = await vault.api.putKeystore(next.seal(vault.sodium), vault.keystoreChangeIndex);
      vault.keystore = next;
      return;
    } catch (error) {
      if (!(error instanceof ConflictError)) throw error;
      await vault.reloadKeystore();
    }
  }
  throw new ConflictError(409, "ABORTED", "the keystore kept changing on another device; try again");
}
