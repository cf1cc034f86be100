// The review queues the signed-in user can see, live: one per role they hold, each loaded then
// followed on `role:<role>` with the SDK's live() (ListPending's snapshot + position, then
// every submission and decision once, in order). Every event carries the role's new pending
// count, so the badge is the database's after each one.

import { ReviewStatus, type Event, type HeraldClient, type Live, type Review } from "@herald/client";

/** The most requests a queue holds on the page (ListPending's largest page). */
export const QUEUE_PAGE = 50;

export interface QueueState {
  role: string;
  /** Pending requests, oldest first (queue order). */
  reviews: Review[];
  /** The role's pending count, from the server. */
  pending: number;
}

export function applyReviewEvent(state: QueueState, event: Event): QueueState {
  const body = event.body;
  switch (body.case) {
    case "reviewSubmitted": {
      const review = body.value.review;
      const reviews = !review || state.reviews.some((r) => r.id === review.id) || state.reviews.length >= QUEUE_PAGE ? state.reviews : [...state.reviews, review];
      return { ...state, reviews, pending: body.value.pending };
    }
    case "reviewDecided": {
      const review = body.value.review;
      if (!review) return { ...state, pending: body.value.pending };
      const reviews =
        review.status === ReviewStatus.PENDING ? state.reviews.map((r) => (r.id === review.id ? review : r)) : state.reviews.filter((r) => r.id !== review.id);
      return { ...state, reviews, pending: body.value.pending };
    }
    default:
      return state;
  }
}

/** Whether `user` may decide `review`: not their own request, not already approved by them. */
export function mayDecide(review: Review, user: string): boolean {
  return review.applicant?.userId !== user && !review.decisions.some((d) => d.reviewerId === user);
}

/** Roles whose queues are followed: every role of the token but `service`. */
export function reviewerRoles(roles: string[]): string[] {
  return [...new Set(roles)].filter((role) => role !== "service" && /^[a-z0-9_-]{1,64}$/.test(role));
}

export class ReviewStore {
  private readonly queues: Live<QueueState>[];
  private readonly listeners = new Set<(queues: QueueState[]) => void>();

  constructor(
    private readonly herald: HeraldClient,
    roles: string[],
    onError: (error: unknown) => void,
  ) {
    this.queues = roles.map((role) =>
      herald.live(() => herald.reviews.listPending({ reviewerRole: role, limit: QUEUE_PAGE }), `role:${role}`, {
        initial: (page): QueueState => ({ role, reviews: page.reviews, pending: page.pending }),
        apply: applyReviewEvent,
        onChange: () => this.emit(),
        onReload: () => this.emit(),
        onError,
      }),
    );
    for (const queue of this.queues) {
      queue.ready.then(() => this.emit(), onError);
    }
  }

  /** The queues loaded so far (a role whose read has not returned is left out). */
  get state(): QueueState[] {
    return this.queues.flatMap((q) => (q.state ? [q.state] : []));
  }

  get loaded(): boolean {
    return this.queues.every((q) => q.state !== undefined);
  }

  subscribe(listener: (queues: QueueState[]) => void): () => void {
    this.listeners.add(listener);
    listener(this.state);
    return () => this.listeners.delete(listener);
  }

  approve(id: string) {
    return this.herald.reviews.approve({ id });
  }

  reject(id: string, reason: string) {
    return this.herald.reviews.reject({ id, reason });
  }

  close(): void {
    for (const queue of this.queues) queue.close();
    this.listeners.clear();
  }

  private emit(): void {
    const state = this.state;
    for (const listener of this.listeners) listener(state);
  }
}
