//! `AuthService` over gRPC: decode, call `service::auth`, encode. The
//! WatchRevocations stream's plumbing stays here (`streams`).

use super::context::{self, request_meta};
use super::convert;
use super::streams::{GuardedSender, StreamGuard, StreamKind, StreamRight};
use crate::app::App;
use crate::domain::session::{LoginOutcome, RevocationEvent, TokenPair};
use crate::overload::CallPermit;
use crate::service::{auth, to_completion};
use kiops_proto::v1::auth_service_server::AuthService;
use kiops_proto::v1::*;
use tonic::{Request, Response, Status};

pub struct AuthApi {
    app: App,
}

impl AuthApi {
    pub fn new(app: App) -> Self {
        Self { app }
    }
}

#[tonic::async_trait]
impl AuthService for AuthApi {
    async fn request_password_reset(
        &self,
        request: Request<RequestPasswordResetRequest>,
    ) -> Result<Response<RequestPasswordResetResponse>, Status> {
        let meta = request_meta(&request);
        auth::request_password_reset(&self.app, &meta, &request.into_inner().email).await?;
        Ok(Response::new(RequestPasswordResetResponse {}))
    }

    async fn reset_password(
        &self,
        request: Request<ResetPasswordRequest>,
    ) -> Result<Response<ResetPasswordResponse>, Status> {
        let meta = request_meta(&request);
        // Not detached: an abandoned request's hash is not run.
        auth::reset_password(self.app.clone(), meta, request.into_inner()).await?;
        Ok(Response::new(ResetPasswordResponse {}))
    }

    async fn sign_up(
        &self,
        request: Request<SignUpRequest>,
    ) -> Result<Response<SignUpResponse>, Status> {
        let meta = request_meta(&request);
        // Not detached: an abandoned request's hash is not run.
        let s = auth::sign_up(self.app.clone(), meta, request.into_inner()).await?;
        Ok(Response::new(SignUpResponse {
            user: Some(convert::user(&s.user, s.now)),
            join_request: s.join_request.as_ref().map(convert::join_request),
        }))
    }

    async fn verify_email(
        &self,
        request: Request<VerifyEmailRequest>,
    ) -> Result<Response<VerifyEmailResponse>, Status> {
        let meta = request_meta(&request);
        to_completion(auth::verify_email(
            self.app.clone(),
            meta,
            request.into_inner().token,
        ))
        .await?;
        Ok(Response::new(VerifyEmailResponse {}))
    }

    async fn resend_verification_email(
        &self,
        request: Request<ResendVerificationEmailRequest>,
    ) -> Result<Response<ResendVerificationEmailResponse>, Status> {
        let meta = request_meta(&request);
        auth::resend_verification_email(&self.app, &meta, &request.into_inner().email).await?;
        Ok(Response::new(ResendVerificationEmailResponse {}))
    }

    async fn login(
        &self,
        request: Request<LoginRequest>,
    ) -> Result<Response<LoginResponse>, Status> {
        let meta = request_meta(&request);
        // Not detached: an abandoned attempt keeps its slot (fail closed)
        // and its hash is not run.
        let outcome = auth::login(self.app.clone(), meta, request.into_inner()).await?;
        Ok(Response::new(match outcome {
            LoginOutcome::Tokens(p) => LoginResponse {
                access_token: p.access_token,
                refresh_token: p.refresh_token,
                expires_in: p.expires_in,
                token_type: BEARER.into(),
                second_factor: None,
            },
            LoginOutcome::SecondFactor {
                challenge,
                expires_at,
            } => LoginResponse {
                second_factor: Some(SecondFactorChallenge {
                    challenge,
                    expire_time: Some(convert::timestamp(expires_at)),
                    methods: vec!["totp".into(), "recovery_code".into()],
                }),
                ..Default::default()
            },
        }))
    }

    async fn verify_second_factor(
        &self,
        request: Request<VerifySecondFactorRequest>,
    ) -> Result<Response<VerifySecondFactorResponse>, Status> {
        let meta = request_meta(&request);
        // Not detached, as Login: an abandoned attempt keeps its slot.
        let p = auth::verify_second_factor(self.app.clone(), meta, request.into_inner()).await?;
        Ok(Response::new(VerifySecondFactorResponse {
            access_token: p.access_token,
            refresh_token: p.refresh_token,
            expires_in: p.expires_in,
            token_type: BEARER.into(),
        }))
    }

    async fn refresh(
        &self,
        request: Request<RefreshRequest>,
    ) -> Result<Response<RefreshResponse>, Status> {
        let meta = request_meta(&request);
        let p: TokenPair = auth::refresh(&self.app, &meta, request.into_inner()).await?;
        Ok(Response::new(RefreshResponse {
            access_token: p.access_token,
            refresh_token: p.refresh_token,
            expires_in: p.expires_in,
            token_type: BEARER.into(),
        }))
    }

    async fn logout(
        &self,
        request: Request<LogoutRequest>,
    ) -> Result<Response<LogoutResponse>, Status> {
        let (meta, caller, r) = context::start(&self.app, request).await?;
        to_completion(auth::logout(self.app.clone(), meta, caller, r)).await?;
        Ok(Response::new(LogoutResponse {}))
    }

    async fn watch_revocations(
        &self,
        request: Request<WatchRevocationsRequest>,
    ) -> Result<Response<tonic::codegen::BoxStream<WatchRevocationsResponse>>, Status> {
        let claims = context::verify_bearer(&self.app, &request)?;
        let call = request.extensions().get::<CallPermit>().cloned();
        let caller = context::caller_of(&self.app, claims.clone()).await?;
        let right = StreamRight::PlatformAdmin;
        super::streams::authorize(&self.app, &caller, &right).await?;
        let start = auth::revocation_start(&self.app, &request.into_inner().after_event_id).await?;
        let slot = self
            .app
            .streams
            .open(StreamKind::Revocations, &caller, call.as_ref())?;
        let guard = StreamGuard::new(self.app.clone(), claims, right, slot);
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<WatchRevocationsResponse, Status>>(64);
        tokio::spawn(follow_revocations(
            self.app.clone(),
            GuardedSender::new(tx, guard),
            start,
        ));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn issue_service_account_token(
        &self,
        request: Request<IssueServiceAccountTokenRequest>,
    ) -> Result<Response<IssueServiceAccountTokenResponse>, Status> {
        let meta = request_meta(&request);
        let peer = context::peer_identities(&request);
        let t = to_completion(auth::issue_service_account_token(
            self.app.clone(),
            meta,
            peer,
            request.into_inner(),
        ))
        .await?;
        Ok(Response::new(IssueServiceAccountTokenResponse {
            access_token: t.access_token,
            expires_in: t.expires_in,
            token_type: "Bearer".into(),
            scopes: t.scopes.iter().map(|s| s.as_str().to_string()).collect(),
        }))
    }

    async fn get_jwks(
        &self,
        _request: Request<GetJwksRequest>,
    ) -> Result<Response<GetJwksResponse>, Status> {
        let jwks = auth::jwks(&self.app);
        let keys = jwks
            .keys
            .iter()
            .filter_map(|k| serde_json::to_string(k).ok())
            .collect();
        Ok(Response::new(GetJwksResponse {
            keys,
            jwks_json: jwks.to_json(),
        }))
    }
}

const BEARER: &str = "Bearer";

/// A WatchRevocations stream's task: sends every event after `last` in
/// commit order, then waits for the tip to move (any replica's writes), until
/// the client goes or the caller loses the right.
async fn follow_revocations(
    app: App,
    mut out: GuardedSender<WatchRevocationsResponse>,
    mut last: i64,
) {
    let mut tip = app.revocation_tip.subscribe();
    loop {
        let events = match auth::revocations_after(&app, last).await {
            Ok(events) => events,
            Err(e) => return out.fail(e).await,
        };
        if events.is_empty() {
            if out
                .idle(std::time::Duration::from_secs(1), tip.changed())
                .await
                .is_err()
            {
                return;
            }
            continue;
        }
        for e in events {
            last = e.seq.unwrap_or(last);
            let event = revocation_event(e, last);
            if out
                .send(WatchRevocationsResponse { event: Some(event) })
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

fn revocation_event(e: RevocationEvent, seq: i64) -> kiops_proto::v1::RevocationEvent {
    kiops_proto::v1::RevocationEvent {
        event_id: seq.to_string(),
        user_id: e.user_id,
        organization_id: e.organization_id.unwrap_or_default(),
        revoke_time: Some(convert::timestamp(e.revoked_at)),
        reason: e.reason,
        session_id: e.session_id.unwrap_or_default(),
    }
}
