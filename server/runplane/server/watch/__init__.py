"""Watching runs: the hub that tails the event log, the streams it feeds, compaction.

    event log --(one tailer per process)--> WatchHub --(bounded queue each)--> Watcher
                                                                 |
    WatchService: initial state, catch-up from the log, bookmarks, the end of WatchRun

Nothing here knows gRPC; the servicer turns each `Delivery` into a WatchRunsResponse.
"""
