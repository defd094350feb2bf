package integration

func cleanupBinaries() {}
