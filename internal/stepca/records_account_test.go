package stepca

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/smallstep/certificates/acme"
	"go.step.sm/crypto/jose"

	"github.com/crank-platform/crank-ca/internal/store"
	"github.com/crank-platform/crank-ca/provisioner"
)

// newJWK is an account key as smallstep's new-account handler holds it.
func newJWK(t *testing.T) *jose.JSONWebKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return &jose.JSONWebKey{Key: k.Public(), Algorithm: "ES256"}
}

// newAccountRequest runs a new-account request's DB calls at a token
// provisioner as smallstep's NewAccount makes them: CreateAccount, then
// UpdateExternalAccountKey with the key bound to the new account. The
// precheck's token outcome is in the request state, as in a real request.
func (e *recordsEnv) newAccountRequest(t *testing.T, ctx context.Context, key *jose.JSONWebKey, kid, worker string) (*acme.Account, error) {
	t.Helper()
	stateFrom(ctx).token = &tokenInfo{kid: kid, claims: provisioner.TokenClaims{
		Provisioner: e.workers.Name, Worker: worker, ExpiresAt: e.clock.Add(time.Hour),
	}}
	acc := &acme.Account{
		Key: key, Contact: []string{"mailto:ops@example.com"}, Status: acme.StatusValid,
		LocationPrefix: "https://ca.example/acme/workers/account/",
		ProvisionerID:  e.workers.id(), ProvisionerName: e.workers.Name,
	}
	if err := e.d.CreateAccount(ctx, acc); err != nil {
		return acc, err
	}
	eak := &acme.ExternalAccountKey{ID: kid, ProvisionerID: e.workers.id(), Reference: worker, HmacKey: []byte("k"), CreatedAt: e.clock}
	if err := eak.BindTo(acc); err != nil {
		t.Fatal(err)
	}
	return acc, e.d.UpdateExternalAccountKey(ctx, e.workers.id(), eak)
}

// TestRecordsAccount: a token provisioner's new account is written with its
// binding in one transaction, readable by smallstep's getters exactly as
// smallstep writes it; a refused binding leaves no account behind.
func TestRecordsAccount(t *testing.T) {
	t.Parallel()
	env := newRecordsEnv(t, recordsClock())
	twin := newRecordsEnv(t, env.clock)
	key := newJWK(t)
	keyID, err := acme.KeyToID(key)
	if err != nil {
		t.Fatal(err)
	}

	ctx := env.requestCtx(t, env.workers, "", nil)
	from := time.Now()
	acc, err := env.newAccountRequest(t, ctx, key, "kid-1", "w1")
	if err != nil {
		t.Fatalf("new account: %v", err)
	}
	to := time.Now()
	checkRecordID(t, "account", acc.ID)

	got, err := env.inner.GetAccount(t.Context(), acc.ID)
	if err != nil {
		t.Fatalf("smallstep's GetAccount: %v", err)
	}
	byKey, err := env.inner.GetAccountByKeyID(t.Context(), keyID)
	if err != nil {
		t.Fatalf("smallstep's GetAccountByKeyID: %v", err)
	}
	if byKey.ID != acc.ID {
		t.Errorf("key index names %s, want %s", byKey.ID, acc.ID)
	}
	want := &acme.Account{ID: acc.ID, Key: key, Contact: acc.Contact, Status: acme.StatusValid,
		LocationPrefix: acc.LocationPrefix, ProvisionerID: acc.ProvisionerID, ProvisionerName: acc.ProvisionerName}
	if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b *jose.JSONWebKey) bool {
		ta, _ := a.Thumbprint(crypto.SHA256)
		tb, _ := b.Thumbprint(crypto.SHA256)
		return string(ta) == string(tb)
	})); diff != "" {
		t.Errorf("account as smallstep reads it (-want +got):\n%s", diff)
	}

	// smallstep's own write of the same account, in the twin store.
	twinAcc := &acme.Account{Key: key, Contact: acc.Contact, Status: acme.StatusValid,
		LocationPrefix: acc.LocationPrefix, ProvisionerID: acc.ProvisionerID, ProvisionerName: acc.ProvisionerName}
	if err := twin.inner.CreateAccount(t.Context(), twinAcc); err != nil {
		t.Fatal(err)
	}
	ours := env.raw(t, accountsTable, acc.ID)
	sameShape(t, "account", ours, twin.raw(t, accountsTable, twinAcc.ID), map[string]string{twinAcc.ID: acc.ID})
	checkCreatedAt(t, "account", ours, from, to, true)
	if got, want := string(env.raw(t, accountKeyTable, keyID)), string(twin.raw(t, accountKeyTable, keyID)); got != acc.ID || want != twinAcc.ID {
		t.Errorf("key index: ours %q (want %q), smallstep's %q", got, acc.ID, want)
	}

	b, err := env.st.Binding(t.Context(), acc.ID)
	if err != nil {
		t.Fatalf("binding: %v", err)
	}
	if b.Worker != "w1" || b.KID != "kid-1" {
		t.Errorf("binding %+v, want worker w1 and kid kid-1", b)
	}
	if used, err := env.st.TokenUsed(t.Context(), "kid-1"); err != nil || !used {
		t.Errorf("token kid-1 used = %v, %v; want spent", used, err)
	}

	// The refusals write nothing: the token again (another key), and the
	// key again (a concurrent new-account that lost to the first).
	tests := []struct {
		name       string
		key        *jose.JSONWebKey
		kid        string
		wantType   string
		wantStatus int
	}{
		{"token reused", newJWK(t), "kid-1", "urn:ietf:params:acme:error:unauthorized", http.StatusUnauthorized},
		{"key taken concurrently", key, "kid-2", "urn:ietf:params:acme:error:malformed", http.StatusConflict},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := env.requestCtx(t, env.workers, "", nil)
			acc, err := env.newAccountRequest(t, ctx, tt.key, tt.kid, "w2")
			var ae *acme.Error
			if !errors.As(err, &ae) || ae.Type != tt.wantType || ae.Status != tt.wantStatus {
				t.Fatalf("err = %v, want %s (%d)", err, tt.wantType, tt.wantStatus)
			}
			if _, err := env.inner.GetAccount(t.Context(), acc.ID); !errors.Is(err, acme.ErrNotFound) {
				t.Errorf("refused account %s is readable (err %v)", acc.ID, err)
			}
			if _, err := env.st.Binding(t.Context(), acc.ID); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("refused account %s has a binding (err %v)", acc.ID, err)
			}
		})
	}
	if used, err := env.st.TokenUsed(t.Context(), "kid-2"); err != nil || used {
		t.Errorf("token kid-2 used = %v, %v; want unspent (its account lost the key race)", used, err)
	}

	// Outside a request (no state to hold it in), the account is stored at
	// once, by smallstep.
	plain := &acme.Account{Key: newJWK(t), Status: acme.StatusValid, ProvisionerID: env.workers.id(), ProvisionerName: env.workers.Name}
	if err := env.d.CreateAccount(context.Background(), plain); err != nil {
		t.Fatal(err)
	}
	if _, err := env.inner.GetAccount(t.Context(), plain.ID); err != nil {
		t.Errorf("account created outside a request: %v", err)
	}
}
