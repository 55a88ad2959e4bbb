import { grpc, protobuf } from 'google-gax';

/**
 * A stand-in for Google's Datastore endpoint that refuses every call with
 * the status it is told, the way production does when a project is not set
 * up: a gRPC status and text, and a google.rpc.ErrorInfo in
 * grpc-status-details-bin when Google sends one (a disabled API). The
 * emulators accept any project and database, so they cannot show these.
 * Point DATASTORE_EMULATOR_HOST or a store's apiEndpoint at `host`.
 */
export interface Refusal {
  code: number;
  details: string;
  errorInfo?: { reason: string; domain: string; metadata: Record<string, string> };
}

const METHODS = ['Lookup', 'RunQuery', 'RunAggregationQuery', 'BeginTransaction', 'Commit', 'Rollback', 'AllocateIds', 'ReserveIds'];

export async function startRefusingDatastore(initial: Refusal): Promise<{ host: string; refuseWith(next: Refusal): void; stop(): Promise<void> }> {
  let refusal = initial;
  const same = (b: Buffer) => b;
  const definition: grpc.ServiceDefinition = Object.fromEntries(
    METHODS.map((name) => [
      name,
      { path: `/google.datastore.v1.Datastore/${name}`, requestStream: false, responseStream: false, requestSerialize: same, requestDeserialize: same, responseSerialize: same, responseDeserialize: same },
    ]),
  );
  const refuse: grpc.handleUnaryCall<Buffer, Buffer> = (_call, callback) => {
    const metadata = new grpc.Metadata();
    if (refusal.errorInfo) metadata.set('grpc-status-details-bin', rpcStatus(refusal));
    callback({ code: refusal.code, details: refusal.details, metadata });
  };
  const server = new grpc.Server();
  server.addService(definition, Object.fromEntries(METHODS.map((name) => [name, refuse])));
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, bound) => (err ? reject(err) : resolve(bound))),
  );
  return {
    host: `127.0.0.1:${port}`,
    refuseWith: (next) => (refusal = next),
    stop: () => new Promise<void>((resolve) => server.tryShutdown(() => resolve())),
  };
}

/** google.rpc.Status { code, message, details: [Any { ErrorInfo }] } in protobuf wire format. */
function rpcStatus({ code, details, errorInfo }: Refusal): Buffer {
  const info = protobuf.Writer.create().uint32(10).string(errorInfo!.reason).uint32(18).string(errorInfo!.domain);
  for (const [key, value] of Object.entries(errorInfo!.metadata)) info.uint32(26).fork().uint32(10).string(key).uint32(18).string(value).ldelim();
  const any = protobuf.Writer.create().uint32(10).string('type.googleapis.com/google.rpc.ErrorInfo').uint32(18).bytes(info.finish());
  return Buffer.from(protobuf.Writer.create().uint32(8).int32(code).uint32(18).string(details).uint32(26).bytes(any.finish()).finish());
}
