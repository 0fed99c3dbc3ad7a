package nonce

import (
	"context"
	"encoding/binary"
	"errors"
	"sync"
	"time"
)

// slotWidth groups spent nonces by issue time, so that expired ones are
// dropped a whole slot at a time.
const slotWidth = time.Minute

// Memory is the replay set of a single replica: spent nonces in memory until
// they expire. Its size is one entry (about 50 bytes) per request of the
// last MaxAge. Save and Restore carry it across a clean restart.
type Memory struct {
	mu    sync.Mutex
	slots map[int64]map[ID]struct{}
	n     int
}

// NewMemory returns an empty replay set.
func NewMemory() *Memory { return &Memory{slots: map[int64]map[ID]struct{}{}} }

// Spend records id; false if it was recorded before. Slots whose nonces all
// expired are dropped on the way.
func (m *Memory) Spend(_ context.Context, id ID, expires time.Time) (bool, error) {
	slot := id.IssuedAt().UnixNano() / int64(slotWidth)
	m.mu.Lock()
	defer m.mu.Unlock()
	m.prune(id.IssuedAt(), expires)
	s := m.slots[slot]
	if s == nil {
		s = map[ID]struct{}{}
		m.slots[slot] = s
	}
	if _, ok := s[id]; ok {
		return false, nil
	}
	s[id] = struct{}{}
	m.n++
	return true, nil
}

// prune drops slots older than this nonce's lifetime before its own issue
// time: the nonces in them expired before any nonce still accepted.
func (m *Memory) prune(issued, expires time.Time) {
	maxAge := expires.Sub(issued)
	oldest := issued.Add(-maxAge-2*slotWidth).UnixNano() / int64(slotWidth)
	for k, s := range m.slots {
		if k < oldest {
			m.n -= len(s)
			delete(m.slots, k)
		}
	}
}

// Len is the number of spent nonces held.
func (m *Memory) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.n
}

// Save encodes the set (at a clean stop) for Restore.
func (m *Memory) Save() []byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]byte, 0, 8+m.n*IDLen)
	out = binary.BigEndian.AppendUint64(out, uint64(m.n)) //nolint:gosec // a count
	for _, s := range m.slots {
		for id := range s {
			out = append(out, id[:]...)
		}
	}
	return out
}

// Restore adds what Save encoded.
func (m *Memory) Restore(b []byte) error {
	if len(b) < 8 || (len(b)-8)%IDLen != 0 || binary.BigEndian.Uint64(b[:8]) != uint64((len(b)-8)/IDLen) {
		return errors.New("nonce: saved replay set is corrupt")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for b = b[8:]; len(b) > 0; b = b[IDLen:] {
		var id ID
		copy(id[:], b[:IDLen])
		slot := id.IssuedAt().UnixNano() / int64(slotWidth)
		s := m.slots[slot]
		if s == nil {
			s = map[ID]struct{}{}
			m.slots[slot] = s
		}
		if _, ok := s[id]; !ok {
			s[id] = struct{}{}
			m.n++
		}
	}
	return nil
}
