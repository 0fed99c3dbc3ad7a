package provisioner

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// TokenReviewConfig configures a KubernetesTokenReviewer.
type TokenReviewConfig struct {
	// URL is the API server ("https://host:6443").
	URL string
	// BearerToken authenticates the CA to the API server; it needs the
	// system:auth-delegator role (create tokenreviews).
	BearerToken string
	// Client carries the API server's trust roots; nil means the system
	// roots with a 10 s timeout.
	Client *http.Client
}

// KubernetesTokenReviewer asks the API server about a token (TokenReview,
// authentication.k8s.io/v1): for clusters whose service-account keys are
// not published, and as a second opinion that catches deleted pods and
// service accounts.
type KubernetesTokenReviewer struct{ cfg TokenReviewConfig }

// NewKubernetesTokenReviewer validates cfg.
func NewKubernetesTokenReviewer(cfg TokenReviewConfig) (*KubernetesTokenReviewer, error) {
	if !strings.HasPrefix(cfg.URL, "https://") {
		return nil, &FieldError{Field: "tokenReview.url", Err: errors.New("must be an https URL")}
	}
	if cfg.BearerToken == "" {
		return nil, &FieldError{Field: "tokenReview.tokenFile", Err: errors.New("the CA's own token is required")}
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{}
	}
	return &KubernetesTokenReviewer{cfg: cfg}, nil
}

// Review returns the username the API server authenticated the token as.
func (r *KubernetesTokenReviewer) Review(ctx context.Context, token, audience string) (string, error) {
	body, err := json.Marshal(map[string]any{
		"apiVersion": "authentication.k8s.io/v1",
		"kind":       "TokenReview",
		"spec":       map[string]any{"token": token, "audiences": []string{audience}},
	})
	if err != nil {
		return "", err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(r.cfg.URL, "/")+"/apis/authentication.k8s.io/v1/tokenreviews", bytes.NewReader(body))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+r.cfg.BearerToken)
	resp, err := r.cfg.Client.Do(req)
	if err != nil {
		return "", &AttestationError{Check: "token-review", Reason: "the API server cannot be reached"}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil || resp.StatusCode != http.StatusCreated && resp.StatusCode != http.StatusOK {
		return "", &AttestationError{Check: "token-review", Reason: fmt.Sprintf("the API server answered %d", resp.StatusCode)}
	}
	var tr struct {
		Status struct {
			Authenticated bool   `json:"authenticated"`
			Error         string `json:"error"`
			User          struct {
				Username string `json:"username"`
			} `json:"user"`
		} `json:"status"`
	}
	if err := json.Unmarshal(b, &tr); err != nil {
		return "", &AttestationError{Check: "token-review", Reason: "the API server's answer is not a TokenReview"}
	}
	if !tr.Status.Authenticated {
		return "", &AttestationError{Check: "token-review", Reason: "the API server does not authenticate the token"}
	}
	return tr.Status.User.Username, nil
}
