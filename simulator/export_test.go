package simulator

// OnCommit has fn called with the number of writes of each durable
// store transaction, on the committer, before any writer is told: a
// test can hold a commit there.
func OnCommit(s *Sim, fn func(n int)) { s.db.committed.Store(&fn) }
