// The sample's entry point: everything is in PmemStoreProgram, which the rdma-lease tool's `store` command runs too.
return await RdmaLease.PmemStore.PmemStoreProgram.RunAsync(args);
