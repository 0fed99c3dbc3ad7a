package store

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/smallstep/nosql/database"
)

// AccountOrderIDs reads smallstep's index of an account's order IDs without
// changing it. smallstep's own listing rewrites the index and, when no order
// is pending any more, stores an empty value that its next new-order for the
// account cannot parse (a 500 for ever after); crank-ca lists orders through
// this read instead. A missing or empty entry is an empty list.
func (s *Store) AccountOrderIDs(_ context.Context, accountID string) ([]string, error) {
	b, err := s.db.Get(accountOrdersTable, []byte(accountID))
	switch {
	case database.IsErrNotFound(err):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("store: read order index of %s: %w", accountID, err)
	case len(b) == 0:
		return nil, nil
	}
	var ids []string
	if err := json.Unmarshal(b, &ids); err != nil {
		return nil, fmt.Errorf("store: order index of %s: %w", accountID, err)
	}
	return ids, nil
}

// Has reports whether a record exists.
func (s *Store) Has(_ context.Context, table []byte, key string) (bool, error) {
	_, err := s.db.Get(table, []byte(key))
	switch {
	case database.IsErrNotFound(err):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("store: read %s/%s: %w", table, key, err)
	}
	return true, nil
}
