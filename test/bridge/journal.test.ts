import { appendFileSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { WriteJournal, type Pending } from '../../bridge/journal';
import { createLogger } from '../../lib/log';

/** The journal of pending writes on its own: what a later run reads back of what an earlier one wrote. */
const log = createLogger({ level: 'silent' });
let dir: string;
let file: string;
const open = () => WriteJournal.read(openSync(file, 'a+'), log);

beforeEach(() => {
  dir = mkdtempSync(path.join(tmpdir(), 'journal-'));
  file = path.join(dir, 'mx1.journal');
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

const writes: Pending[] = [
  { op: 'delete', evpid: '0123456789abcdef' },
  { op: 'create', evpid: '01234567aaaaaaaa', data: Buffer.from('type: bounce\n') },
  { op: 'update', evpid: '01234567aaaaaaaa', data: Buffer.from([0, 1, 2, 255]) },
  { op: 'rollback', msgid: '89abcdef' },
];

test('a later run reads back what was not done, in the order it was written, bytes intact', () => {
  const first = open();
  const seqs = writes.map((w) => first.record(w));
  first.done(seqs[1]);
  const second = open();
  expect(second.leftover.map((l) => l.write)).toEqual([writes[0], writes[2], writes[3]]);
  expect(second.pending).toBe(3);
  // new writes are numbered after the old ones, so their done lines cannot be mistaken
  const next = second.record(writes[0]);
  expect(next).toBeGreaterThan(Math.max(...seqs));
});

test('is emptied once nothing is pending', () => {
  const journal = open();
  const seqs = writes.map((w) => journal.record(w));
  for (const seq of seqs) journal.done(seq);
  expect(readFileSync(file)).toHaveLength(0);
  expect(open().leftover).toEqual([]);
});

test('cuts a line torn by a kill in the middle of writing it, so that the next line is whole', () => {
  open().record(writes[0]);
  appendFileSync(file, '{"n":7,"op":"delete","evpid":"0123');
  const second = open();
  expect(second.leftover.map((l) => l.write)).toEqual([writes[0]]);
  second.record(writes[3]);
  expect(open().leftover.map((l) => l.write)).toEqual([writes[0], writes[3]]);
});

test('skips unreadable lines', () => {
  open().record(writes[0]);
  appendFileSync(file, '{"n":8,"op":"delete","evpid":"not hex"}\nnot json\n');
  expect(open().leftover.map((l) => l.write)).toEqual([writes[0]]);
});

test('a write that cannot be put on disk throws', () => {
  const full = WriteJournal.read(openSync('/dev/full', 'r+'), log);
  expect(() => full.record(writes[0])).toThrow(/ENOSPC/);
  expect(full.pending).toBe(0);
});
