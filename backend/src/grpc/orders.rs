//! `herald.v1.Orders`: principal → parse → [`crate::domain::orders`] → map errors. `Watch`
//! streams an [`OrderWatch`]: the node's subscription to `order:<id>` seen through the
//! domain's [`WatchFilter`]; `ReportLocation` hands each fix to the domain's tracker and
//! counts what became of it.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use futures_util::{Stream, StreamExt};
use herald_proto::{
    server::orders_server::Orders as OrdersRpc,
    v1::{
        FixRejection, OrderEvent, OrderStatus, OrdersAssignCourierRequest,
        OrdersAssignCourierResponse, OrdersCancelRequest, OrdersCancelResponse,
        OrdersGetBusinessStatusRequest, OrdersGetBusinessStatusResponse, OrdersGetRequest,
        OrdersGetResponse, OrdersListRequest, OrdersListResponse, OrdersPlaceRequest,
        OrdersPlaceResponse, OrdersPublishOfferRequest, OrdersPublishOfferResponse,
        OrdersRecordPaymentRequest, OrdersRecordPaymentResponse, OrdersReportLocationRequest,
        OrdersReportLocationResponse, OrdersSetBusinessStatusRequest,
        OrdersSetBusinessStatusResponse, OrdersSetCourierStatusRequest,
        OrdersSetCourierStatusResponse, OrdersUpdateStatusRequest, OrdersUpdateStatusResponse,
        SubscribeResponse, WatchOrderRequest, subscribe_response::Frame,
    },
};
use prost::Message;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::{
    auth::{AuthError, interceptor::principal},
    domain::orders::{
        ListQuery, OrderError, Orders, WatchEnd, WatchFilter,
        events::ms_of,
        rules::{self, Command, ItemInput, OrderId, PaymentInput, PlaceInput, Reason},
        tracking::{FixError, Offered},
    },
    error::{Error, with_code},
    subscription::EventStream,
};

/// How many refused fixes a ReportLocation answer describes one by one.
pub const MAX_REJECTIONS_LISTED: usize = 20;

#[derive(Debug, Clone)]
pub struct OrdersService {
    orders: Orders,
}

impl OrdersService {
    pub fn new(orders: Orders) -> Self {
        Self { orders }
    }
}

fn status(error: impl Into<OrderError>) -> Status {
    Error::from(error.into()).into()
}

fn id(value: u64) -> Result<OrderId, Status> {
    OrderId::new(value).map_err(status)
}

fn statuses(values: &[i32]) -> Result<Vec<OrderStatus>, Status> {
    let mut parsed = Vec::with_capacity(values.len());
    for value in values {
        match OrderStatus::try_from(*value) {
            Ok(OrderStatus::Unspecified) | Err(_) => {
                return Err(status(rules::RuleError::Invalid(format!(
                    "statuses holds {value}, which is not an order status"
                ))));
            }
            Ok(status) if !parsed.contains(&status) => parsed.push(status),
            Ok(_) => {}
        }
    }
    Ok(parsed)
}

#[tonic::async_trait]
impl OrdersRpc for OrdersService {
    type WatchStream = OrderWatch;

    async fn place(
        &self,
        request: Request<OrdersPlaceRequest>,
    ) -> Result<Response<OrdersPlaceResponse>, Status> {
        let who = principal(&request)?;
        let request = request.into_inner();
        let input = PlaceInput {
            items: request
                .items
                .into_iter()
                .map(|item| ItemInput {
                    sku: item.sku,
                    name: item.name,
                    quantity: item.quantity,
                    unit_price_minor: item.unit_price_minor,
                })
                .collect(),
            currency: request.currency,
            delivery_address: request.delivery_address,
            note: request.note,
            client_total_minor: request.client_total_minor,
        };
        let order = self.orders.place(&who, input).await.map_err(status)?;
        Ok(Response::new(OrdersPlaceResponse { order: Some(order) }))
    }

    async fn get(
        &self,
        request: Request<OrdersGetRequest>,
    ) -> Result<Response<OrdersGetResponse>, Status> {
        let who = principal(&request)?;
        let id = id(request.get_ref().order_id)?;
        let order = self.orders.get(&who, id).await.map_err(status)?;
        Ok(Response::new(OrdersGetResponse { order: Some(order) }))
    }

    async fn list(
        &self,
        request: Request<OrdersListRequest>,
    ) -> Result<Response<OrdersListResponse>, Status> {
        let who = principal(&request)?;
        let request = request.into_inner();
        let query = ListQuery {
            statuses: statuses(&request.statuses)?,
            created_from_ms: request.created_after.as_ref().map(ms_of),
            created_before_ms: request.created_before.as_ref().map(ms_of),
            page_size: request.page_size,
            page_token: request.page_token,
        };
        let page = self.orders.list(&who, query).await.map_err(status)?;
        let (feed_topic, feed_position) = match page.feed {
            Some((topic, position)) => (topic.to_string(), Some(position)),
            None => (String::new(), None),
        };
        Ok(Response::new(OrdersListResponse {
            orders: page.orders,
            next_page_token: page.next_page_token,
            feed_topic,
            feed_position,
        }))
    }

    async fn cancel(
        &self,
        request: Request<OrdersCancelRequest>,
    ) -> Result<Response<OrdersCancelResponse>, Status> {
        let who = principal(&request)?;
        let request = request.into_inner();
        let id = id(request.order_id)?;
        let command = Command::Cancel {
            reason: Reason::parse(&request.reason).map_err(status)?,
            expected_version: None,
        };
        let order = self
            .orders
            .command(&who, id, command)
            .await
            .map_err(status)?;
        Ok(Response::new(OrdersCancelResponse { order: Some(order) }))
    }

    async fn update_status(
        &self,
        request: Request<OrdersUpdateStatusRequest>,
    ) -> Result<Response<OrdersUpdateStatusResponse>, Status> {
        let who = principal(&request)?;
        let request = request.into_inner();
        let id = id(request.order_id)?;
        let command = match rules::parse_target(request.status, &request.reason).map_err(status)? {
            (_, Some(reason)) => Command::Cancel {
                reason,
                expected_version: request.expected_version,
            },
            (to, None) => Command::Advance {
                to,
                expected_version: request.expected_version,
            },
        };
        let order = self
            .orders
            .command(&who, id, command)
            .await
            .map_err(status)?;
        Ok(Response::new(OrdersUpdateStatusResponse {
            order: Some(order),
        }))
    }

    async fn assign_courier(
        &self,
        request: Request<OrdersAssignCourierRequest>,
    ) -> Result<Response<OrdersAssignCourierResponse>, Status> {
        let who = principal(&request)?;
        let request = request.into_inner();
        let id = id(request.order_id)?;
        let courier_id = rules::courier_id(&request.courier_id).map_err(status)?;
        crate::domain::orders::events::courier_feed(&courier_id).map_err(|e| {
            status(rules::RuleError::Invalid(format!(
                "courier_id cannot name the courier's topic: {e}"
            )))
        })?;
        let command = Command::AssignCourier {
            courier_id,
            availability: None,
        };
        let order = self
            .orders
            .command(&who, id, command)
            .await
            .map_err(status)?;
        Ok(Response::new(OrdersAssignCourierResponse {
            order: Some(order),
        }))
    }

    async fn set_business_status(
        &self,
        request: Request<OrdersSetBusinessStatusRequest>,
    ) -> Result<Response<OrdersSetBusinessStatusResponse>, Status> {
        let who = principal(&request)?;
        let request = request.into_inner();
        let (business, message) =
            rules::business_status(request.status, &request.message).map_err(status)?;
        let business_status = self
            .orders
            .set_business_status(&who, business, message)
            .await
            .map_err(status)?;
        Ok(Response::new(OrdersSetBusinessStatusResponse {
            business_status: Some(business_status),
        }))
    }

    async fn get_business_status(
        &self,
        request: Request<OrdersGetBusinessStatusRequest>,
    ) -> Result<Response<OrdersGetBusinessStatusResponse>, Status> {
        principal(&request)?;
        let business_status = self.orders.business_status().await.map_err(status)?;
        Ok(Response::new(OrdersGetBusinessStatusResponse {
            business_status: Some(business_status),
        }))
    }

    async fn publish_offer(
        &self,
        request: Request<OrdersPublishOfferRequest>,
    ) -> Result<Response<OrdersPublishOfferResponse>, Status> {
        let who = principal(&request)?;
        let request = request.into_inner();
        let offer = self
            .orders
            .publish_offer(
                &who,
                &request.title,
                &request.text,
                request.valid_until.as_ref().map(ms_of),
            )
            .await
            .map_err(status)?;
        Ok(Response::new(OrdersPublishOfferResponse {
            offer: Some(offer),
        }))
    }

    async fn set_courier_status(
        &self,
        request: Request<OrdersSetCourierStatusRequest>,
    ) -> Result<Response<OrdersSetCourierStatusResponse>, Status> {
        let who = principal(&request)?;
        let availability = rules::courier_status(request.get_ref().status).map_err(status)?;
        let courier = self
            .orders
            .set_courier_status(&who, availability)
            .await
            .map_err(status)?;
        Ok(Response::new(OrdersSetCourierStatusResponse {
            courier: Some(courier),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn report_location(
        &self,
        request: Request<Streaming<OrdersReportLocationRequest>>,
    ) -> Result<Response<OrdersReportLocationResponse>, Status> {
        let who = principal(&request)?;
        self.orders.check_courier(&who).map_err(status)?;
        let mut fixes = request.into_inner();
        let mut answer = OrdersReportLocationResponse::default();
        let mut index = 0u64;
        while let Some(message) = fixes.message().await? {
            // A stream outlives its token's check at the start: it ends when the token expires.
            if who.time_left().is_zero() {
                return Err(AuthError::Expired.into());
            }
            let outcome = match OrderId::new(message.order_id) {
                Ok(order_id) => {
                    self.orders
                        .report_location(&who, order_id, message.fix.as_ref())
                        .await
                }
                Err(invalid) => Err(FixError::Rule(invalid)),
            };
            match outcome {
                Ok(offered) => {
                    answer.accepted += 1;
                    if offered == Offered::Superseded {
                        answer.superseded += 1;
                    }
                }
                Err(refused) => {
                    answer.rejected += 1;
                    if answer.rejections.len() < MAX_REJECTIONS_LISTED {
                        answer.rejections.push(FixRejection {
                            index,
                            order_id: message.order_id,
                            code: refused.code().to_owned(),
                            message: refused.to_string(),
                        });
                    }
                }
            }
            index += 1;
        }
        Ok(Response::new(answer))
    }

    async fn record_payment(
        &self,
        request: Request<OrdersRecordPaymentRequest>,
    ) -> Result<Response<OrdersRecordPaymentResponse>, Status> {
        let who = principal(&request)?;
        let request = request.into_inner();
        let id = id(request.order_id)?;
        let payment = PaymentInput::parse(
            request.amount_minor,
            &request.currency,
            request.method,
            &request.reference,
        )
        .map_err(status)?;
        let recorded = self
            .orders
            .record_payment(&who, id, payment)
            .await
            .map_err(status)?;
        Ok(Response::new(OrdersRecordPaymentResponse {
            payment: Some(recorded.payment),
            duplicate: recorded.duplicate,
            order: Some(recorded.order),
        }))
    }

    #[tracing::instrument(skip_all, fields(order = request.get_ref().order_id))]
    async fn watch(
        &self,
        request: Request<WatchOrderRequest>,
    ) -> Result<Response<OrderWatch>, Status> {
        let who = principal(&request)?;
        let request = request.into_inner();
        let id = id(request.order_id)?;
        let (events, filter) = self
            .orders
            .watch(&who, id, request.since)
            .await
            .map_err(status)?;
        Ok(Response::new(OrderWatch {
            events,
            filter,
            done: false,
        }))
    }
}

/// The stream of `Orders/Watch`: the topic's subscription through the watch filter. It ends
/// with OK after DELIVERED or CANCELLED, with PERMISSION_DENIED when a watching courier loses
/// the order, and with the subscription's status when the subscription ends (shutdown, token
/// expiry: resume with the last position). Dropping it drops the subscription.
#[derive(Debug)]
pub struct OrderWatch {
    events: EventStream,
    filter: WatchFilter,
    done: bool,
}

impl Stream for OrderWatch {
    type Item = Result<OrderEvent, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            if let Some(event) = this.filter.next_ready() {
                return Poll::Ready(Some(Ok(event)));
            }
            match this.filter.is_over() {
                Some(Ok(())) => {
                    this.done = true;
                    return Poll::Ready(None);
                }
                Some(Err(WatchEnd::Reassigned(message))) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(with_code(
                        Code::PermissionDenied,
                        message,
                        herald_proto::v1::CloseCode::PermissionDenied,
                    ))));
                }
                None => {}
            }
            match std::task::ready!(this.events.poll_next_unpin(cx)) {
                None => {
                    this.done = true;
                    return Poll::Ready(None);
                }
                Some(Err(status)) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(status)));
                }
                Some(Ok(frame)) => {
                    let frame = SubscribeResponse::decode(frame.as_bytes().clone())
                        .map_err(|e| Status::internal(format!("undecodable frame: {e}")))?;
                    match frame.frame {
                        Some(Frame::Event(event)) => this.filter.accept(event),
                        Some(Frame::Signal(signal)) => this.filter.accept_signal(signal),
                        _ => {}
                    }
                }
            }
        }
    }
}
