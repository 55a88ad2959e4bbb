export default async function globalTeardown(): Promise<void> {
  await Promise.all((globalThis.queueTestEmulators ?? []).map((e) => e.stop()));
}
