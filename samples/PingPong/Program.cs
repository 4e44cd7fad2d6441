// The sample's entry point: everything is in PingPongProgram, which the rdma-lease tool's `pingpong` command runs too.
return await RdmaLease.PingPong.PingPongProgram.RunAsync(args);
