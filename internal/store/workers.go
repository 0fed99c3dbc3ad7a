package store

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/smallstep/nosql/database"
)

var workersTable = []byte("crank_workers")

// WorkerState is what an operator decided about a worker identity.
type WorkerState struct {
	Provisioner string `json:"provisioner"`
	Worker      string `json:"worker"`
	Disabled    bool   `json:"disabled"`
	// DisabledAt is the last disable: bindings made and tokens minted up to
	// then stay unusable even after the worker is enabled again, so that
	// enabling needs a new token.
	DisabledAt time.Time `json:"disabledAt,omitzero"`
	EnabledAt  time.Time `json:"enabledAt,omitzero"`
}

func workerKey(prov, worker string) []byte { return []byte(prov + "/" + worker) }

// Worker returns the state of a worker (zero state when never touched).
func (s *Store) Worker(_ context.Context, prov, worker string) (WorkerState, error) {
	b, err := s.db.Get(workersTable, workerKey(prov, worker))
	switch {
	case database.IsErrNotFound(err):
		return WorkerState{Provisioner: prov, Worker: worker}, nil
	case err != nil:
		return WorkerState{}, fmt.Errorf("store: read worker %s: %w", worker, err)
	}
	var w WorkerState
	if err := json.Unmarshal(b, &w); err != nil {
		return WorkerState{}, fmt.Errorf("store: decode worker %s: %w", worker, err)
	}
	return w, nil
}

// SetWorkerDisabled disables or enables a worker and returns its new state.
func (s *Store) SetWorkerDisabled(ctx context.Context, prov, worker string, disabled bool) (WorkerState, error) {
	w, err := s.Worker(ctx, prov, worker)
	if err != nil {
		return WorkerState{}, err
	}
	now := s.now().UTC()
	w.Disabled = disabled
	if disabled {
		w.DisabledAt = now
	} else {
		w.EnabledAt = now
	}
	b, err := json.Marshal(w)
	if err != nil {
		return WorkerState{}, err
	}
	if err := s.db.Set(workersTable, workerKey(prov, worker), b); err != nil {
		return WorkerState{}, fmt.Errorf("store: write worker %s: %w", worker, err)
	}
	return w, nil
}

// Workers lists every worker an operator has touched.
func (s *Store) Workers(_ context.Context) ([]WorkerState, error) {
	es, err := s.db.List(workersTable)
	if database.IsErrNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("store: list workers: %w", err)
	}
	out := make([]WorkerState, 0, len(es))
	for _, e := range es {
		var w WorkerState
		if json.Unmarshal(e.Value, &w) == nil {
			out = append(out, w)
		}
	}
	return out, nil
}

// Bindings lists every account binding.
func (s *Store) Bindings(_ context.Context) ([]Binding, error) {
	es, err := s.db.List(bindingTable)
	if database.IsErrNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("store: list bindings: %w", err)
	}
	out := make([]Binding, 0, len(es))
	for _, e := range es {
		var b Binding
		if json.Unmarshal(e.Value, &b) == nil {
			out = append(out, b)
		}
	}
	return out, nil
}
