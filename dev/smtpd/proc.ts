import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';

/** The processes on this machine as /proc shows them, and the process groups the harness runs smtpd in. */

interface LiveProcess {
  pid: number;
  comm: string;
  pgrp: number;
  /** CPU time so far, user and system, in clock ticks. */
  cpuTicks: number;
}

/** Live (not zombie) processes named smtpd, any instance on the machine. */
export function smtpdPids(): number[] {
  return liveProcesses()
    .filter((p) => p.comm === 'smtpd')
    .map((p) => p.pid);
}

function liveProcesses(): LiveProcess[] {
  const found: LiveProcess[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    let stat: string;
    try {
      stat = readFileSync(`/proc/${name}/stat`, 'utf8');
    } catch {
      continue; // exited meanwhile
    }
    // comm is in parentheses and may itself contain spaces or parentheses
    const open = stat.indexOf('(');
    const close = stat.lastIndexOf(')');
    const fields = stat.slice(close + 2).split(' ');
    const [state, , pgrp] = fields;
    if (state === 'Z' || state === 'X') continue;
    // utime and stime, fields 14 and 15 of proc(5), counted from the state (field 3)
    found.push({ pid: Number(name), comm: stat.slice(open + 1, close), pgrp: Number(pgrp), cpuTicks: Number(fields[11]) + Number(fields[12]) });
  }
  return found;
}

let ticksPerSecond: number | undefined;

/** CPU milliseconds (user and system) each live process of these process groups, or with these pids, has used so far. */
export function cpuMillis(groups: { pgrp?: number[]; pid?: number[] }): { pid: number; comm: string; ms: number }[] {
  ticksPerSecond ??= Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  return liveProcesses()
    .filter((p) => groups.pgrp?.includes(p.pgrp) || groups.pid?.includes(p.pid))
    .map((p) => ({ pid: p.pid, comm: p.comm, ms: (p.cpuTicks * 1000) / ticksPerSecond! }));
}

function groupAlive(pgid: number): boolean {
  return liveProcesses().some((p) => p.pgrp === pgid);
}

export function signalGroup(pgid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pgid, signal);
  } catch {
    // already gone
  }
}

/** Waits until no process of the group is left, killing what remains after 5 s. */
export async function waitGroupGone(pgid: number): Promise<void> {
  const deadline = Date.now() + 5_000;
  while (groupAlive(pgid) && Date.now() < deadline) await sleep(50);
  if (groupAlive(pgid)) signalGroup(pgid, 'SIGKILL');
  while (groupAlive(pgid)) await sleep(50);
}
