package pki

import (
	"bytes"
	"errors"
)

// Switch makes s issue from ca from now on (after an intermediate rotation
// and a reload): it issues a certificate from ca at once and serves it,
// so that the server's own chain moves to the new intermediate with the
// workers'. The old certificate stays valid for the connections made with
// it. On error nothing changes. ca must have the same root as before.
func (s *ServerCerts) Switch(ca *CA) error {
	if ca == nil || ca.Intermediate == nil || ca.IntermediateKey == nil || ca.Root == nil {
		return errors.New("pki: Switch needs a CA with a root, an intermediate certificate and its key")
	}
	s.issueMu.Lock()
	defer s.issueMu.Unlock()
	if !bytes.Equal(s.ca.Root.Raw, ca.Root.Raw) {
		return errors.New("pki: Switch: the new CA has another root")
	}
	if bytes.Equal(s.ca.Intermediate.Raw, ca.Intermediate.Raw) {
		return nil
	}
	prev := s.ca
	s.ca = ca
	sc, err := s.issue(s.now())
	if err != nil {
		s.ca = prev
		return err
	}
	s.cur.Store(sc)
	return nil
}
