package integration

import (
	"github.com/go-acme/lego/v4/lego"
	"github.com/go-acme/lego/v4/registration"
)

type legoClientUser struct {
	cl *lego.Client
	u  *legoUser
}

func registrationOptions() registration.RegisterOptions {
	return registration.RegisterOptions{TermsOfServiceAgreed: true}
}
