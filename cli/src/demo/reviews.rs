//! `herald demo reviews`: a signup service submits requests to the `admin` queue; two
//! reviewers watch `role:admin` and race to decide; the applicant's inbox hears the outcome.

use herald_backend::Config;
use herald_proto::v1::{
    NotificationsCountsRequest, ReviewApplicant, ReviewsApproveRequest, ReviewsCountPendingRequest,
    ReviewsListDecisionsRequest, ReviewsListPendingRequest, ReviewsRejectRequest,
    ReviewsSubmitRequest, StreamPosition, notifications_client::NotificationsClient,
    reviews_client::ReviewsClient,
};
use tonic::transport::Channel;

use super::{Actor, Stage, Watcher, status_error};
use crate::{CliError, ReviewsDemoArgs};

struct Scene {
    stage: Stage,
    reviews: ReviewsClient<Channel>,
    inbox: NotificationsClient<Channel>,
    signup: Actor,
    alice: Actor,
    bob: Actor,
    applicant: Actor,
    screens: Vec<Watcher>,
    applicant_inbox: Watcher,
}

impl Scene {
    async fn queue_position(&mut self) -> Result<StreamPosition, CliError> {
        let request = self.alice.request(ReviewsCountPendingRequest::default())?;
        let response = self
            .reviews
            .count_pending(request)
            .await
            .map_err(status_error)?;
        Ok(response.into_inner().position.unwrap_or_default())
    }

    async fn inbox_position(&mut self) -> Result<StreamPosition, CliError> {
        let request = self.applicant.request(NotificationsCountsRequest {})?;
        let response = self.inbox.counts(request).await.map_err(status_error)?;
        Ok(response.into_inner().position.unwrap_or_default())
    }

    /// Prints what the step pushed to both reviewers' screens and the applicant's inbox.
    async fn pushed(&mut self) -> Result<(), CliError> {
        let queue = self.queue_position().await?;
        for screen in &mut self.screens {
            screen.show_until(&queue).await?;
        }
        let inbox = self.inbox_position().await?;
        self.applicant_inbox.show_until(&inbox).await?;
        Ok(())
    }

    async fn submit(&mut self, name: &str, role: &str, required: u32) -> Result<String, CliError> {
        let request = self.signup.request(ReviewsSubmitRequest {
            applicant: Some(ReviewApplicant {
                name: name.to_owned(),
                email: format!("{}@example.com", name.to_lowercase().replace(' ', ".")),
                phone: String::new(),
                user_id: self.applicant.name.clone(),
            }),
            requested_role: role.to_owned(),
            details: None,
            reviewer_role: String::new(),
            required_approvals: required,
        })?;
        let review = self
            .reviews
            .submit(request)
            .await
            .map_err(status_error)?
            .into_inner()
            .review
            .unwrap_or_default();
        println!(
            "   Submit → request …{}",
            &review.id[review.id.len().saturating_sub(6)..]
        );
        Ok(review.id)
    }

    async fn approve(&mut self, who: &Actor, id: &str) -> Result<(), CliError> {
        let request = who.request(ReviewsApproveRequest { id: id.to_owned() })?;
        match self.reviews.approve(request).await {
            Ok(_) => println!("   {} approves → ok", who.name),
            Err(status) => println!(
                "   {} approves → {:?}: {}",
                who.name,
                status.code(),
                status.message()
            ),
        }
        Ok(())
    }
}

pub(crate) async fn run(args: ReviewsDemoArgs, config: &Config) -> Result<(), CliError> {
    let stage = Stage::open(&args.common, config).await?;
    let signup = stage.actor("demo-signup-service", &["service"])?;
    let alice = stage.actor("alice", &["admin"])?;
    let bob = stage.actor("bob", &["admin"])?;
    let applicant = stage.actor(&args.applicant, &[])?;
    let mut reviews = ReviewsClient::new(stage.channel.clone());
    let mut inbox = NotificationsClient::new(stage.channel.clone());

    println!(
        "Signups that need approval queue up on role:admin. Two reviewers, alice and bob, watch \
         it; the applicant `{}` watches their inbox, user:{}.",
        applicant.name, applicant.name
    );
    let pending = reviews
        .list_pending(alice.request(ReviewsListPendingRequest::default())?)
        .await
        .map_err(status_error)?
        .into_inner();
    println!(
        "   ListPending now: {} pending (at offset {})",
        pending.pending,
        pending.position.clone().unwrap_or_default().offset
    );
    let queue = pending.position.unwrap_or_default();
    let screens = vec![
        Watcher::open(&stage, &alice, "alice", "role:admin", queue.clone()).await?,
        Watcher::open(&stage, &bob, "bob  ", "role:admin", queue).await?,
    ];
    let position = inbox
        .counts(applicant.request(NotificationsCountsRequest {})?)
        .await
        .map_err(status_error)?
        .into_inner()
        .position
        .unwrap_or_default();
    let topic = format!("user:{}", applicant.name);
    let applicant_inbox =
        Watcher::open(&stage, &applicant, &applicant.name, &topic, position).await?;
    let mut scene = Scene {
        stage,
        reviews,
        inbox,
        signup,
        alice,
        bob,
        applicant,
        screens,
        applicant_inbox,
    };

    scene
        .stage
        .step("A signup asks for the artisan role: it appears for every reviewer at once")
        .await;
    let first = scene.submit("Marie Curie", "artisan", 1).await?;
    scene.pushed().await?;

    scene
        .stage
        .step("alice and bob approve at the same moment: the first commit wins")
        .await;
    let (alice, bob) = (scene.alice.clone(), scene.bob.clone());
    let mut a = ReviewsClient::new(scene.stage.channel.clone());
    let mut b = a.clone();
    let (ra, rb) = tokio::join!(
        a.approve(alice.request(ReviewsApproveRequest { id: first.clone() })?),
        b.approve(bob.request(ReviewsApproveRequest { id: first.clone() })?),
    );
    for (who, result) in [(&alice, ra), (&bob, rb)] {
        match result {
            Ok(_) => println!("   {} approves → ok", who.name),
            Err(status) => println!(
                "   {} approves → {:?}: {}",
                who.name,
                status.code(),
                status.message()
            ),
        }
    }
    scene.pushed().await?;

    scene
        .stage
        .step("A sensitive role needs two approvals by different reviewers")
        .await;
    let second = scene.submit("Pierre Curie", "inspector", 2).await?;
    scene.pushed().await?;
    scene.approve(&alice, &second).await?;
    scene.approve(&alice, &second).await?;
    scene.approve(&bob, &second).await?;
    scene.pushed().await?;

    scene.stage.step("bob rejects a third request with a reason; the applicant is told in the same transaction").await;
    let third = scene.submit("Irène Joliot-Curie", "artisan", 1).await?;
    let request = bob.request(ReviewsRejectRequest {
        id: third,
        reason: "Please add photos of your work".into(),
    })?;
    scene.reviews.reject(request).await.map_err(status_error)?;
    println!("   bob rejects → ok");
    scene.pushed().await?;

    scene
        .stage
        .step("Nobody may decide their own request, and only reviewers see the queue")
        .await;
    let own = scene.submit("Self Reviewer", "artisan", 1).await?;
    scene.pushed().await?;
    let reviewer_applicant = scene
        .stage
        .actor(&scene.applicant.name.clone(), &["admin"])?;
    scene.approve(&reviewer_applicant, &own).await?;
    let outsider = scene.stage.actor("mallory", &[])?;
    match scene
        .reviews
        .count_pending(outsider.request(ReviewsCountPendingRequest::default())?)
        .await
    {
        Ok(_) => println!("   mallory counts the queue → ok?"),
        Err(status) => println!(
            "   mallory counts the queue → {:?}: {}",
            status.code(),
            status.message()
        ),
    }
    let request = alice.request(ReviewsRejectRequest {
        id: own,
        reason: "Duplicate of an earlier request".into(),
    })?;
    scene.reviews.reject(request).await.map_err(status_error)?;
    println!("   alice rejects it → ok");
    scene.pushed().await?;

    scene
        .stage
        .step("The audit trail (ListDecisions, admins only), newest first")
        .await;
    let request = alice.request(ReviewsListDecisionsRequest {
        limit: 8,
        ..ReviewsListDecisionsRequest::default()
    })?;
    let trail = scene
        .reviews
        .list_decisions(request)
        .await
        .map_err(status_error)?
        .into_inner();
    for decision in trail.decisions {
        println!(
            "   {:<6} {:<8} request …{}{}",
            decision.reviewer_id,
            decision
                .verdict()
                .as_str_name()
                .trim_start_matches("REVIEW_VERDICT_")
                .to_lowercase(),
            &decision.review_id[decision.review_id.len().saturating_sub(6)..],
            if decision.reason.is_empty() {
                String::new()
            } else {
                format!(": {}", decision.reason)
            }
        );
    }
    Ok(())
}
