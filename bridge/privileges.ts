import { closeSync, constants, fchownSync, fstatSync, mkdirSync, openSync } from 'node:fs';
import { userInfo } from 'node:os';
import path from 'node:path';

/**
 * smtpd starts its queue backend as root, and the bridge needs root only to
 * open its files and read its secrets. Root opens nothing by a path that
 * another user could have pointed elsewhere: files are opened without
 * following a symbolic link, must be plain files with one link, and are
 * handed to the bridge's user through the open fd. Then root is dropped for
 * good; a bridge that cannot drop it does not serve smtpd.
 */
export interface UserIds {
  name: string;
  uid: number;
  gid: number;
}

export const DEFAULT_USER = 'opensmtpq';

export class PrivilegeError extends Error {
  override name = 'PrivilegeError';
}

export const isRoot = (): boolean => process.geteuid?.() === 0;

/** The ids of `name`, looked up by switching the effective user to it and back (no helper program runs as root). */
export function lookUpUser(name: string): UserIds {
  if (!isRoot()) return { name, uid: process.getuid!(), gid: process.getgid!() };
  try {
    process.seteuid!(name);
    // the passwd entry of the effective user: its primary group
    const { uid, gid } = userInfo();
    return { name, uid, gid };
  } catch (err) {
    throw new PrivilegeError(`no user ${name} to run as (${(err as Error).message}); set "user" in the config to an unprivileged user`);
  } finally {
    process.seteuid!(0);
  }
}

/**
 * Opens `file` for writing (appending, or from the start), and for reading
 * too with `read`, creating it with `mode` if missing (and its folder with
 * `dirMode`, default 755), and gives it to `owner`. Refuses a symbolic link,
 * a hard link to another file, and anything not a plain file.
 */
export function openOwnedFile(file: string, owner: UserIds | undefined, options: { mode: number; append: boolean; read?: boolean; dirMode?: number }): number {
  mkdirSync(path.dirname(file), { recursive: true, mode: options.dirMode ?? 0o755 });
  const access = options.read ? constants.O_RDWR : constants.O_WRONLY;
  const flags = access | constants.O_CREAT | constants.O_NOFOLLOW | constants.O_NONBLOCK | (options.append ? constants.O_APPEND : 0);
  let fd: number;
  try {
    fd = openSync(file, flags, options.mode);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new PrivilegeError(code === 'ELOOP' ? `${file} is a symbolic link: not opened` : `cannot open ${file}: ${(err as Error).message}`);
  }
  try {
    const stat = fstatSync(fd);
    if (!stat.isFile()) throw new PrivilegeError(`${file} is not a plain file: not used`);
    if (stat.nlink !== 1) throw new PrivilegeError(`${file} has ${stat.nlink} hard links: not used`);
    if (owner && isRoot()) fchownSync(fd, owner.uid, owner.gid);
    return fd;
  } catch (err) {
    closeSync(fd);
    throw err;
  }
}

/** Drops root for good: supplementary groups, then the group, then the user; checks that root cannot come back. */
export function dropRoot(user: UserIds): void {
  if (!isRoot()) return;
  if (user.uid === 0) throw new PrivilegeError(`user ${user.name} is root: the bridge does not run as root`);
  process.setgroups!([user.gid]);
  process.setgid!(user.gid);
  process.setuid!(user.uid);
  process.umask(0o077);
  let regained = false;
  try {
    process.setuid!(0);
    regained = true;
  } catch {
    // EPERM: as it should be
  }
  if (regained || process.getuid!() === 0 || process.geteuid!() === 0) throw new PrivilegeError('could not drop root');
}
