// The POSIX tar (ustar) of the export archive (docs/formats.md, section 10): members read as
// byte ranges of the file, so an archive is passed on member by member, unchanged.
import { decodeUtf8 } from "../crypto/bytes";

const BLOCK = 512;

export interface TarMember {
  name: string;
  type: string; // "0" a file, "5" a directory
  data: Uint8Array;
  /** The member's header and padded data in the archive. */
  raw: Uint8Array;
}

function field(header: Uint8Array, start: number, length: number): string {
  const bytes = header.subarray(start, start + length);
  const end = bytes.indexOf(0);
  return decodeUtf8(end < 0 ? bytes : bytes.subarray(0, end));
}

export function readTar(archive: Uint8Array, what: string): TarMember[] {
  const members: TarMember[] = [];
  for (let at = 0; at + BLOCK <= archive.length;) {
    const header = archive.subarray(at, at + BLOCK);
    if (header.every((b) => b === 0)) break;
    let sum = 0;
    header.forEach((b, i) => (sum += i >= 148 && i < 156 ? 32 : b));
    const stored = parseInt(field(header, 148, 8).trim(), 8);
    if (stored !== sum) throw new Error(`${what}: a tar header at byte ${at} has a bad checksum (not a tar archive, or damaged)`);
    const size = parseInt(field(header, 124, 12).trim() || "0", 8);
    const prefix = field(header, 345, 155);
    const name = (prefix ? `${prefix}/` : "") + field(header, 0, 100);
    const type = String.fromCharCode(header[156] || 48);
    const end = at + BLOCK + Math.ceil(size / BLOCK) * BLOCK;
    if (at + BLOCK + size > archive.length) throw new Error(`${what}: member ${name} is cut short`);
    members.push({ name, type, data: archive.subarray(at + BLOCK, at + BLOCK + size), raw: archive.subarray(at, end) });
    at = end;
  }
  return members;
}

/** The members as one archive again (each unchanged), ended by two zero blocks. */
export function writeTar(members: TarMember[]): Uint8Array {
  const size = members.reduce((n, m) => n + m.raw.length, 0) + 2 * BLOCK;
  const out = new Uint8Array(size);
  let at = 0;
  for (const member of members) {
    out.set(member.raw, at);
    at += member.raw.length;
  }
  return out;
}
